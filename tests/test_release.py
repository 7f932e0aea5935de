"""The released LiveAct folder as its users have it: every key of the full-size files mapped, a tiny folder of
exactly that layout through the CLI and the app, and one sentence for each way such a folder can be broken."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SHARED, probe, run_liveact
from liveact import release
from liveact.audio import save_wav
from liveact.synthetic import SAMPLE_RATE, portrait, speech

MANIFESTS = SHARED / "fixtures"
SECONDS = 2.5


def meta_state(name: str) -> dict[str, torch.Tensor]:
    """A full-size released file as meta tensors of its manifest's names and shapes (no bytes)."""
    manifest = MANIFESTS / f"release-{name}-keys.json"
    if not manifest.exists():
        pytest.skip(f"missing manifest {manifest}")
    return {key: torch.empty(shape, device="meta") for key, shape in json.loads(manifest.read_text())["state_dict"].items()}


def _vae(state):
    from diffusers import AutoencoderKLWan

    config = release.vae_config(state)
    return AutoencoderKLWan(**config), lambda part: release.convert_vae(part, config["num_res_blocks"])


def _clip(state):
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(release.clip_config(state)), release.convert_clip


def _t5(state):
    from transformers import UMT5EncoderModel

    return UMT5EncoderModel(release.t5_config(state)), release.convert_t5


@pytest.mark.parametrize("name, build", [("vae", _vae), ("clip", _clip), ("t5", _t5)])
def test_every_tensor_of_the_full_size_files_is_mapped(name, build):
    state = meta_state(name)
    with torch.device("meta"):
        model, convert = build(state)
    mapped = {key: tuple(tensor.shape) for key, tensor in convert(state)}
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert sorted(set(expected) - set(mapped)) == [], "missing"
    assert sorted(set(mapped) - set(expected)) == [], "unexpected"
    assert {key: shape for key, shape in mapped.items() if expected[key] != shape} == {}, "shapes"
    read = [key for key in state if not key.startswith("textual.") and key != "log_scale"]  # CLIP's text side unused
    assert [key for key in read if not list(convert({key: state[key]}))] == [], "read but not used"
    print(f"{name}: {len(state)} tensors in the file, {len(read)} read, {len(mapped)} liveact tensors, none missing")


@pytest.fixture(scope="module")
def release_folder(tmp_path_factory) -> Path:
    if not (MANIFESTS / "reference" / "conv").exists() or not (MANIFESTS / "release").exists():
        pytest.skip(f"missing fixtures in {MANIFESTS}")
    from release_folder import build_release_folder

    return build_release_folder(tmp_path_factory.mktemp("released"), SHARED)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    image = folder / "portrait.png"
    portrait(3, 96).save(image)
    return image, save_wav(folder / "speech.wav", speech(SECONDS, 11), SAMPLE_RATE)


def test_the_released_folder_makes_an_mp4_with_sound_through_the_cli(release_folder, inputs, tmp_path):
    out = tmp_path / "talk.mp4"
    image, audio = inputs
    result = run_liveact("generate", "--model", str(release_folder), "--wav2vec", str(release_folder.parent / release.WAV2VEC2_FOLDER),
                         "--image", str(image), "--audio", str(audio), "--out", str(out), "--size", "64*64", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "warning" not in result.stderr.lower()
    info = probe(out)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert set(streams) == {"video", "audio"} and (streams["video"]["width"], streams["video"]["height"]) == (64, 64)
    assert abs(float(info["format"]["duration"]) - SECONDS) < 0.1


def _broken(release_folder: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the folder (links to its files) with `name` removed, to be replaced by the test."""
    folder = tmp_path / "LiveAct"
    shutil.copytree(release_folder, folder, symlinks=True, copy_function=os.symlink)
    (folder / name).unlink()
    return folder


def _truncated_t5(folder: Path, source: Path) -> None:
    data = source.read_bytes()
    (folder / release.T5_FILE).write_bytes(data[: len(data) // 2])


def _clip_config(folder: Path, source: Path) -> None:
    (folder / "config.json").write_text(json.dumps({"_class_name": "CLIPVisionModel", "hidden_size": 1280, "num_hidden_layers": 32}))


@pytest.mark.parametrize("removed, damage, named", [
    (release.VAE_FILE, None, release.VAE_FILE),
    (release.T5_FILE, _truncated_t5, release.T5_FILE),
    ("config.json", _clip_config, "config.json"),
])
def test_a_broken_released_folder_is_one_sentence_naming_the_file(release_folder, inputs, tmp_path, removed, damage, named):
    folder = _broken(release_folder, tmp_path, removed)
    if damage is not None:
        damage(folder, release_folder / removed)
    image, audio = inputs
    result = run_liveact("generate", "--model", str(folder), "--wav2vec", str(release_folder.parent / release.WAV2VEC2_FOLDER),
                         "--image", str(image), "--audio", str(audio), "--out", str(tmp_path / "o.mp4"), "--size", "64*64",
                         "--device", "cpu")
    assert_one_sentence(result, named)


def assert_one_sentence(result: subprocess.CompletedProcess, named: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and named in lines[0], lines[0]
    print(lines[0])


@pytest.mark.parametrize("extra, named", [
    (["--device", "cpu", "--wav2vec", "nowhere"], "--wav2vec nowhere is not a wav2vec2 folder"),
    (["--wav2vec", "nowhere"], "needs a CUDA GPU"),  # the released model runs on GPUs unless told otherwise
])
def test_a_released_folder_asked_wrongly_is_one_sentence(release_folder, inputs, tmp_path, extra, named):
    image, audio = inputs
    result = run_liveact("generate", "--model", str(release_folder), "--image", str(image), "--audio", str(audio),
                         "--out", str(tmp_path / "o.mp4"), *extra, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert_one_sentence(result, named)


def test_the_released_folder_streams_in_the_app(release_folder, tmp_path):
    from test_app import CHROMIUM, choose_example, playing, wait_until

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is missing (make installs it)")
    from playwright.sync_api import sync_playwright

    from liveact.workers import free_port

    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "TMPDIR": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "app.py", "--model", str(release_folder), "--port", str(port),
                               "--size", "64*64", "--device", "cpu"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--no-first-run", "--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page()
            deadline = time.perf_counter() + 180
            while True:  # the app loads the model and makes a warm-up chunk before it answers
                assert server.poll() is None, server.stdout.read()
                try:
                    page.goto(url)
                    break
                except Exception:  # noqa: BLE001 -- not listening yet
                    assert time.perf_counter() < deadline, "the app did not start within 180 s"
                    time.sleep(2)
            page.wait_for_selector("#generate")
            assert "LiveAct" in page.inner_text("body")  # the page names the model it runs
            choose_example(page, 1)
            page.click("#generate")
            wait_until(lambda: playing(page), timeout=120)
            wait_until(lambda: "chunk" in page.inner_text("#stats"), timeout=30)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
