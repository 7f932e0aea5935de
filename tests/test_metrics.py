"""The shipped reader recovers the world's parameters; the metrics separate good videos from bad ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from liveact.metrics import WEIGHTS, evaluate_reader, evaluate_video, lagged_corr, load_reader, static_mask
from liveact.synthetic import SAMPLE_RATE, make_clip, render


@pytest.fixture(scope="module")
def reader():
    return load_reader()


@pytest.fixture(scope="module")
def clip():
    return make_clip(777_001, seconds=12.0)  # a held-out seed


def test_reader_accuracy_on_held_out_renders(reader):
    result = evaluate_reader(reader, count=600)
    shipped = json.loads((WEIGHTS / "metrics.json").read_text())
    print(f"\nreader on held-out renders: mouth_open corr {result['mouth_open_corr']:.3f}, "
          f"identity MAE {result['identity_mae']:.3f} ({result['identity_mae_in_spreads']:.3f} spreads), "
          f"hair style accuracy {result['hair_style_accuracy']:.2f} (shipped run: {shipped['mouth_open_corr']:.3f})")
    assert result["mouth_open_corr"] >= 0.95
    assert result["identity_mae_in_spreads"] < 0.3


def test_ground_truth_video_is_in_sync_with_flat_drift(reader, clip):
    evaluation = evaluate_video(clip.video, clip.audio, clip.fps, clip.reference, reader)
    print("\nground truth: " + evaluation.report())
    assert evaluation.lip_sync_corr >= 0.9 and abs(evaluation.lip_sync_lag) <= 1
    assert abs(evaluation.drift_at(12.0) - evaluation.drift_at(2.0)) < 0.1
    assert evaluation.flicker < 1.0


def test_audio_shifted_by_half_a_second_scores_clearly_worse(reader, clip):
    synced = evaluate_video(clip.video, clip.audio, clip.fps, clip.reference, reader)
    shift = SAMPLE_RATE // 2
    shifted_audio = np.concatenate([np.zeros(shift, np.float32), clip.audio[:-shift]])
    shifted = evaluate_video(clip.video, shifted_audio, clip.fps, clip.reference, reader)
    print(f"\nshifted by 0.5 s: {shifted.report()}")
    assert shifted.lip_sync_corr < synced.lip_sync_corr - 0.3
    assert shifted.offset == -10  # the mouth leads the shifted audio by 10 frames


def test_drift_and_flicker_see_a_changing_face(reader, clip):
    other = make_clip(777_002, seconds=12.0)
    swapped = torch.cat([clip.video[:120], other.video[120:]])  # the identity changes at 6 s
    noisy = (clip.video + 0.05 * torch.randn_like(clip.video)).clamp(0, 1)
    swap, noise = (evaluate_video(v, clip.audio, clip.fps, clip.reference, reader) for v in (swapped, noisy))
    assert swap.drift_at(12.0) > swap.drift_at(6.0) + 0.2
    truth = evaluate_video(clip.video, clip.audio, clip.fps, clip.reference, reader)
    assert noise.flicker > truth.flicker + 3


def test_report_and_plot(reader, clip, tmp_path):
    evaluation = evaluate_video(clip.video[:60], clip.audio, clip.fps, clip.reference, reader)
    line = evaluation.report()
    assert "\n" not in line and "lip-sync" in line and "drift" in line and "flicker" in line
    path = evaluation.plot(tmp_path / "eval.png")
    assert path.stat().st_size > 10_000


def test_lags_and_static_mask():
    x = np.sin(np.arange(100) / 3.0)
    assert lagged_corr(np.roll(x, 4), x, 4) > 0.99 > lagged_corr(np.roll(x, 4), x, 0)
    frame = render(make_clip(3, seconds=1.0).identity, torch.zeros(8))[0]
    mask = static_mask(frame)
    assert 0.1 < mask.float().mean() < 0.7 and mask[0, 0] and not mask[64, 64]
