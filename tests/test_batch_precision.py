"""scripts/batch_pww.py --precision auto: each process loads what pww_ldm.fast measured good on
its device, and the job hash's model key names it; the default stays autocast."""

import torch

import pww_ldm.fast as fast
from pww_ldm.batch.module import BatchGenerator, model_id
from pww_ldm.batch.run import build_parser


def test_auto_takes_the_measured_dtypes_and_names_them_in_the_key(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"0123")
    monkeypatch.setattr(fast, "auto_precision", lambda device: ("bf16", "CPU has native bf16: bf16"))
    monkeypatch.setattr(fast, "auto_vae_precision", lambda device: ("fp32", "VAE fp32"))
    module = BatchGenerator([], str(ckpt), tmp_path / "out", dtype="auto")
    options = module._resolved_precision(torch.device("cpu"))
    assert options["dtype"] == "bf16" and options["vae_dtype"] == "fp32"
    assert module.model_key == model_id(ckpt, "bf16/vae-fp32") != model_id(ckpt, "auto")
    assert "native bf16" in capsys.readouterr().out
    plain = BatchGenerator([], str(ckpt), tmp_path / "out", dtype=None)
    assert plain._resolved_precision(torch.device("cpu")) == plain.load_options
    assert "vae_dtype" not in plain.load_options


def test_the_default_is_autocast():
    args = build_parser().parse_args(["--jobs", "j.jsonl"])
    assert args.precision == "autocast"
    assert build_parser().parse_args(["--jobs", "j.jsonl", "--precision", "auto"]).precision == "auto"
