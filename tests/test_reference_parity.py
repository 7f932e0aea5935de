"""Replay the ground truth recorded from the released SoulX-LiveAct code and require our stream to match.

Each fixture folder (format: ../shared/fixtures/README.md) holds a tiny model's weights, the
conditioning, and every denoiser call of a streaming run. We rebuild the model with our class, drive
our `StreamingSession` with the recorded noise, and compare every denoiser output (the guided one
when audio guidance is on), every denoiser input and every chunk's clean latent.

Set LIVEACT_REFERENCE_FIXTURES (os.pathsep-separated folders) to replay other fixtures instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import SHARED
from liveact.reference_differences import fixture_session

TOLERANCE = 1e-4


def fixture_dirs() -> list[Path]:
    configured = os.environ.get("LIVEACT_REFERENCE_FIXTURES")
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    return sorted(p for p in (SHARED / "fixtures" / "reference").glob("*") if (p / "meta.json").exists())


def replay(folder: Path) -> dict[str, float]:
    """Run our stream on a fixture; return the max abs error of each recorded tensor kind."""
    errors = {"pred": 0.0, "latent_in": 0.0, "final": 0.0}
    calls = []

    def on_step(chunk: int, step: int, latents: torch.Tensor, velocity: torch.Tensor) -> None:
        errors["pred"] = max(errors["pred"], (velocity[0] - rec[f"c{chunk}.s{step}.pred"]).abs().max().item())
        errors["latent_in"] = max(errors["latent_in"],
                                  (latents[0] - rec[f"c{chunk}.s{step}.latent_in"]).abs().max().item())
        calls.append((chunk, step))

    session, meta, rec = fixture_session(folder, on_step=on_step)  # on_step reads rec once the stream runs
    assert meta["block_sizes_latent_frames"] == [6, 8], "fixture uses another window layout"
    config = session.config
    for chunk in session.stream(rec["audio_feat"], num_chunks=meta["chunks"]):
        errors["final"] = max(errors["final"], (chunk.latents[0] - rec[f"c{chunk.index}.final"]).abs().max().item())

    recorded_calls = [(c["chunk"], c["step"]) for c in meta["calls"]]
    assert calls == recorded_calls, "our stream made different denoiser calls than the reference"
    for call in meta["calls"]:  # the schedule the reference reported, call by call
        assert session.audio_window_start(call["chunk"]) == call["audio_window_start"]
        assert (call["step"] < config.audio_from_step) == call["skip_audio"]
        assert (call["chunk"] >= 2) == call["update_cache"]
        assert abs(config.sampler.timesteps[call["step"]] - call["t"]) < 1e-6
    return errors


@pytest.mark.parametrize("folder", fixture_dirs(), ids=lambda p: p.name)
def test_reference_parity(folder: Path, capsys):
    errors = replay(folder)
    with capsys.disabled():
        print(f"\nreference parity [{folder.name}]: max abs error "
              + ", ".join(f"{kind} {err:.2e}" for kind, err in errors.items()) + f" (tolerance {TOLERANCE:g})")
    assert all(err <= TOLERANCE for err in errors.values()), errors


def test_fixtures_present():
    if not os.environ.get("LIVEACT_REFERENCE_FIXTURES") and not (SHARED / "fixtures").exists():
        pytest.skip(f"no shared fixtures at {SHARED / 'fixtures'}")
    assert len(fixture_dirs()) >= 1, "no reference fixture found to replay"
