"""`python -m liveact generate` end to end on real inputs with a tiny random model: a playable mp4 with sound."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import example, run_liveact


def probe(path) -> dict:
    result = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type,codec_name,width,height,nb_frames",
                             "-of", "json", str(path)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def generate(*args):
    return run_liveact("generate", *args)


def test_generate_writes_a_playable_mp4_with_the_speech(tmp_path, random_model_dir):
    out = tmp_path / "talk.mp4"
    result = generate("--model", str(random_model_dir), "--image", str(example("portrait-1.png")),
                      "--audio", str(example("speech-1.wav")), "--out", str(out), "--seed", "1")
    assert result.returncode == 0, result.stderr
    info = probe(out)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264" and (streams["video"]["width"], streams["video"]["height"]) == (32, 32)
    assert streams["audio"]["codec_name"] == "aac"
    assert abs(float(info["format"]["duration"]) - 37.76) < 0.1  # the speech's duration
    assert int(streams["video"]["nb_frames"]) == int(37.76 * 20)
    # the video decodes to the end (playable): ffmpeg reads every frame without error
    subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(out), "-f", "null", "-"], check=True)


def test_reference_example_json_with_edit_prompts(tmp_path, random_model_dir):
    spec = [{"prompt": "a person is talking", "cond_image": str(example("portrait-2.png")),
             "cond_audio": str(example("speech-1.wav")), "edit_prompt": {"[1, 2]": "the person smiles"}}]
    (tmp_path / "examples.json").write_text(json.dumps(spec))
    result = generate("--model", str(random_model_dir), "--input-json", str(tmp_path / "examples.json"),
                      "--out", str(tmp_path / "videos"), "--size", "48*32")
    assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "videos" / "portrait-2_speech-1.mp4")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (48, 32)


@pytest.mark.parametrize("args, message", [
    (["--image", "missing.png"], "the portrait missing.png was not found"),
    (["--size", "500*500"], "multiples of 16"),
    (["--edit-json", "EDIT"], "is not '[first_chunk, last_chunk]'"),
])
def test_bad_input_is_one_sentence(tmp_path, random_model_dir, args, message):
    (tmp_path / "edit.json").write_text(json.dumps({"chunk two": "smile"}))
    args = [str(tmp_path / "edit.json") if a == "EDIT" else a for a in args]
    defaults = {"--image": str(example("portrait-1.png")), "--audio": str(example("speech-1.wav")),
                "--out": str(tmp_path / "o.mp4"), "--model": str(random_model_dir)}
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    result = generate(*args)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
