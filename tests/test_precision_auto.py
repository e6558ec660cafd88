"""`--precision auto` decides from two things: the CPU flags (is bf16 fast here?) and the
demo-model measurement (is bf16 good enough?), for the UNet/text encoder and the VAE alike, and
says what it picked and why."""

import argparse

import pytest

import pww_ldm.fast
from pww_ldm import cli
from pww_ldm.fast import (
    BF16_MAX_IOU_CHANGE,
    BF16_MIN_PSNR_DB,
    Bf16Evidence,
    auto_precision,
    auto_vae_precision,
    precision_passes,
)

ZEN4 = "fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni".split()
SKYLAKE = "avx2 avx512f avx512bw avx512vl".split()
GOOD = Bf16Evidence("UNet", psnr_db=40.0, max_abs_d_iou=0.005, source="x.json")
BLURRY = Bf16Evidence("UNet", psnr_db=30.0, max_abs_d_iou=0.005, source="x.json")
MOVED = Bf16Evidence("UNet", psnr_db=40.0, max_abs_d_iou=0.05, source="x.json")


@pytest.mark.parametrize(("psnr", "d_iou", "expected"), [
    (35.0, 0.0, True), (34.99, 0.0, False), (50.0, 0.0199, True), (50.0, 0.02, False),
    (50.0, -0.03, False), (float("nan"), 0.0, False), (float("inf"), 0.0, True)])
def test_the_criterion_is_35_db_and_an_iou_change_under_0_02(psnr, d_iou, expected):
    assert (BF16_MIN_PSNR_DB, BF16_MAX_IOU_CHANGE) == (35.0, 0.02)
    assert precision_passes(psnr, d_iou) is expected


@pytest.mark.parametrize(("flags", "evidence", "expected"), [
    (ZEN4, GOOD, "bf16"), (ZEN4, BLURRY, "fp32"), (ZEN4, MOVED, "fp32"), (SKYLAKE, GOOD, "fp32"),
    ([], GOOD, "fp32")])
def test_auto_takes_bf16_only_when_native_and_measured_good_enough(flags, evidence, expected):
    name, reason = auto_precision("cpu", flags, evidence)
    vae_name, vae_reason = auto_vae_precision("cpu", flags, evidence)
    assert name == vae_name == expected
    assert reason.endswith(f": {expected}") and vae_reason.endswith(f"VAE {expected}")
    if flags == ZEN4:  # the numbers that decided are in the message
        assert f"{evidence.psnr_db:.1f} dB" in reason and "x.json" in reason


def test_cuda_keeps_fp16_for_the_unet_and_fp32_for_the_vae_whatever_the_evidence():
    assert auto_precision("cuda", ZEN4, GOOD)[0] == "fp16"
    assert auto_vae_precision("cuda", ZEN4, GOOD)[0] == "fp32"


def test_the_recorded_measurement_is_what_auto_uses_on_a_bf16_cpu(monkeypatch):
    monkeypatch.setattr(pww_ldm.fast, "cpu_flags", lambda: set(ZEN4))
    unet, vae = pww_ldm.fast.BF16_UNET, pww_ldm.fast.BF16_VAE
    assert auto_precision("cpu")[0] == ("bf16" if unet.passes else "fp32")
    assert auto_vae_precision("cpu")[0] == ("bf16" if vae.passes else "fp32")


@pytest.mark.parametrize("flags", [ZEN4, SKYLAKE])
def test_cli_says_what_auto_picked_for_the_unet_and_the_vae(monkeypatch, capsys, flags):
    monkeypatch.setattr(pww_ldm.fast, "cpu_flags", lambda: set(flags))
    picked = cli._precisions(argparse.Namespace(precision="auto", device="cpu"))[0]
    out = capsys.readouterr().out
    assert picked == auto_precision("cpu")[0]
    assert f": {picked}" in out and "VAE" in out


@pytest.mark.parametrize("flags", [ZEN4, SKYLAKE])
def test_cli_auto_loads_the_unet_and_the_vae_in_what_auto_picked(monkeypatch, tmp_path, flags):
    import pww_ldm

    monkeypatch.setattr(pww_ldm.fast, "cpu_flags", lambda: set(flags))
    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # stop before generating: only the load's arguments matter here

    monkeypatch.setattr(pww_ldm, "load_model", fake_load)
    with pytest.raises(SystemExit):
        cli.main(["--precision", "auto", "--outdir", str(tmp_path), "--steps", "1"])
    assert seen["dtype"] == auto_precision("cpu")[0]
    assert seen["vae_dtype"] == auto_vae_precision("cpu")[0]
    if flags == SKYLAKE:
        assert seen["dtype"] == seen["vae_dtype"] == "fp32"
