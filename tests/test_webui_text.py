"""The web UI server takes the scripts' text flags (clip skip, embeddings, LoRA) for its models."""

from __future__ import annotations

import pww_ldm
from pww_ldm.webui.server import build_parser, create_app, main


class FakeModel:
    clip_skip = 1


def test_text_flags_reach_the_models_the_server_loads(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(pww_ldm, "load_model", lambda path, **kw: loaded.append(FakeModel()) or loaded[-1])
    args = build_parser().parse_args(["--clip-skip", "2"])
    create_app(outdir=tmp_path, text=args)
    assert len(loaded) == 1 and loaded[0].clip_skip == 2


def test_bad_text_flags_stop_the_server_before_it_loads(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(pww_ldm, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert main(["--embeddings-dir", str(tmp_path / "nope")]) == 2
    assert main(["--lora", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--embeddings-dir" in err and "--lora" in err
