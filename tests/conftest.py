from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liveact.transformer import LiveActTransformer

ROOT = Path(__file__).resolve().parents[1]
# fixtures and examples live beside the clone (never committed); LIVEACT_SHARED points elsewhere
SHARED = Path(os.environ.get("LIVEACT_SHARED", ROOT.parent / "shared"))

# A tiny model of the real layout: 4 tokens per latent frame (4x4 latents), so ConvKV's
# 5-token groups straddle frame boundaries as they do in the reference fixtures.
TINY = dict(text_len=8, dim=32, ffn_dim=64, freq_dim=16, text_dim=16, num_heads=2, num_layers=2,
            intermediate_dim=8, output_dim=8, context_tokens=2, image_dim=16, image_tokens=5,
            audio_layers=2, audio_channels=8)
LATENT_HW = (4, 4)


def make_tiny_model(seed: int = 0, **overrides) -> LiveActTransformer:
    torch.manual_seed(seed)
    model = LiveActTransformer(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # a zero head predicts nothing: give it weights so outputs depend on inputs
        model.head.head.weight.normal_(std=0.2)
    return model


def make_conditioning(model: LiveActTransformer, seed: int = 0, window: int = 14, video_frames: int = 200):
    """Random y, image tokens, text tokens and audio features of the right shapes."""
    cfg, g = model.config, torch.Generator().manual_seed(seed)
    y = torch.randn(1, cfg.in_dim - cfg.out_dim, window, *LATENT_HW, generator=g)
    image = torch.randn(1, cfg.image_tokens, cfg.image_dim, generator=g)
    text = torch.randn(1, 5, cfg.text_dim, generator=g)
    audio = torch.randn(video_frames, cfg.audio_layers, cfg.audio_channels, generator=g)
    return y, image, text, audio


def stream_latents(model: LiveActTransformer, seed: int = 0, chunks: int = 4, **session_options) -> list[torch.Tensor]:
    """Clean latents of the first `chunks` chunks of a seeded stream on random conditioning."""
    from liveact.stream import StreamingSession

    y, image, text, audio = make_conditioning(model)
    session = StreamingSession(model, y, image, text, generator=torch.Generator().manual_seed(seed), **session_options)
    return [chunk.latents for chunk in session.stream(audio, num_chunks=chunks)]


def run_liveact(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m liveact ARGS` as a user runs it, output captured."""
    return subprocess.run([sys.executable, "-m", "liveact", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


@pytest.fixture
def tiny_model() -> LiveActTransformer:
    return make_tiny_model()


EXAMPLES = SHARED / "examples"


def example(name: str) -> Path:
    """A file from ../shared/examples (real portraits and speech), or skip the test where it is absent."""
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip(f"missing example {path}")
    return path


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    """A complete tiny random model folder in the real layout (see tests/random_model.py)."""
    from random_model import build_random_model

    return build_random_model(tmp_path_factory.mktemp("random-model"))


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The shipped tiny model, loaded once for the tests that stream with it."""
    from liveact.pipeline import load

    return load("tiny")


def video_frames(movie: str | Path):
    """Every frame of a video file, decoded: uint8 [T, H, W, 3]."""
    import av
    import numpy as np

    with av.open(str(movie)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def probe(path: Path) -> dict:
    """ffprobe's view of a media file: its streams and first video frame's picture type."""
    import json

    shown = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                           capture_output=True, text=True, check=True)
    info = json.loads(shown.stdout)
    first = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-read_intervals", "%+#1",
                            "-show_entries", "frame=pict_type,key_frame", "-of", "csv=p=0", str(path)],
                           capture_output=True, text=True, check=True)
    info["first_frame"] = first.stdout.strip().splitlines()[0]
    return info


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on the tiny model, served as `python app.py` serves it, with its own Gradio folder (uploads,
    cache, and the sessions' folders inside it)."""
    from types import SimpleNamespace

    from liveact.app import Studio, build, default_threads
    from liveact.workers import free_port

    threads, folder = torch.get_num_threads(), os.environ.get("GRADIO_TEMP_DIR")
    torch.set_num_threads(default_threads())  # a core left to the browser, as `python app.py` runs
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    examples = tmp_path_factory.mktemp("examples")
    studio = Studio("tiny")
    demo = build(studio, examples)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            allowed_paths=[str(examples)], quiet=True)
    yield SimpleNamespace(studio=studio, url=url, sessions=studio.root, examples=examples, demo=demo,
                          gradio=Path(os.environ["GRADIO_TEMP_DIR"]))
    demo.close()
    studio.close()
    torch.set_num_threads(threads)
    if folder is None:
        os.environ.pop("GRADIO_TEMP_DIR")
    else:
        os.environ["GRADIO_TEMP_DIR"] = folder
