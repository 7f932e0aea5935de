"""What fp8 costs in quality (`python -m liveact eval --precision`), on a few seconds of video."""

from __future__ import annotations

from liveact.evaluate import HELDOUT_SEED, frame_difference, precision_cost, precision_table, precision_variants
from liveact.pipeline import load


def test_frames_differ_only_where_the_precision_does(tiny_pipeline):
    seeds = [HELDOUT_SEED]
    same = frame_difference(tiny_pipeline, load("tiny"), seeds, 3.0)
    assert same == {"max_pixel_difference": 0, "mean_pixel_difference": 0.0}  # same options, same noise: same video
    fp8 = frame_difference(tiny_pipeline, load("tiny", options=precision_variants()["fp8 memory"]), seeds, 3.0)
    assert 0 < fp8["mean_pixel_difference"] <= fp8["max_pixel_difference"] <= 255


def test_precision_report_scores_every_variant():
    report = precision_cost("tiny", minutes=0.05, identities=1, progress=False)
    assert list(report) == ["plain", "fp8 memory", "fp8 memory + fp8 GEMM"]
    assert "max_pixel_difference" not in report["plain"]
    assert all(r["rollouts"] == 1 and -1 <= r["lip_sync_corr"] <= 1 for r in report.values())
    assert all(report[name]["max_pixel_difference"] > 0 for name in list(report)[1:])
    assert precision_table(report).count("\n") == 4
