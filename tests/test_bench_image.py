"""The time-to-image, memory and precision benchmarks' own logic: configurations, the table's
medians and ratios, PSNR, and one tiny image through the fresh-process worker."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_image_worker  # noqa: E402
import bench_time_to_image  # noqa: E402
from bench_precision import psnr  # noqa: E402


def test_psnr_of_a_one_level_difference_is_48_13_db():
    a = np.full((4, 4, 3), 100, np.uint8)
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255.0), abs=1e-9)  # mse 1
    assert psnr(a, a) == float("inf")


def test_configurations_include_registered_approximations_and_reject_unknown(monkeypatch):
    monkeypatch.setattr(bench_time_to_image, "APPROXIMATIONS", {"tome": {"tome": 0.5}})
    assert bench_time_to_image.default_configs() == ["diffusers", "exact", "auto", "tome"]
    tasks = bench_time_to_image.config_tasks(["exact", "tome"])
    assert tasks["tome"] == {"impl": "ours", "precision": "fp32", "approximation": "tome"}
    with pytest.raises(ValueError, match="unknown configuration.*'nope'.*choose from"):
        bench_time_to_image.config_tasks(["nope"])


def test_summary_takes_medians_of_timed_runs_and_ratios_to_diffusers():
    def res(timed):
        return {"timed_s": timed, "phases_s": [{"unet": 1.0}], "note": ""}
    rows = bench_time_to_image.summarise({"diffusers": [res([10.0]), res([30.0])],
                                          "exact": [res([12.0]), res([14.0]), res([100.0])]})
    by = {r["config"]: r for r in rows}
    assert by["diffusers"]["median_s"] == 20.0 and by["exact"]["median_s"] == 14.0
    assert by["exact"]["ratio_vs_diffusers"] == pytest.approx(0.7)
    assert by["exact"]["runs"] == 3


@pytest.mark.slow
def test_worker_times_a_tiny_image_and_attributes_memory_to_its_phases():
    res = bench_image_worker.run_image_worker({"impl": "ours", "precision": "fp32", "size": 64,
                                               "steps": 1, "repeats": 2, "quick": True,
                                               "threads": 1})
    assert len(res["times_s"]) == 2 and all(t > 0 for t in res["times_s"])
    assert {"text", "unet", "vae_decode"} <= set(res["phase_peak_mib"])
    assert res["rss_peak_mib"] >= res["rss_start_mib"] > 0
    assert res["note"] == "UNet/text fp32, VAE fp32"
