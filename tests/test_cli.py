"""`python -m liveact generate` end to end on real inputs with a tiny random model: a playable mp4 with sound."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import example, run_liveact
from liveact.__main__ import parse_edits
from liveact.synthetic import portrait


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


def test_edit_ranges_are_inclusive_and_kept_in_order():
    """The reference's {"[a, b]": prompt} covers chunks a..b; where ranges overlap the first given wins, so the
    order is kept. Internally an edit is (first chunk, end chunk exclusive, prompt)."""
    assert parse_edits({"[2, 5]": "smile", "[0, 3]": "frown", "[4, 4]": "wink"}) == [
        (2, 6, "smile"), (0, 4, "frown"), (4, 5, "wink")]


@pytest.mark.parametrize("options", [[], ["--stream-audio"]], ids=["whole", "stream-audio"])
def test_speech_from_a_video_file(tmp_path, options):
    """An mp4 with a video track and an AAC track as --audio: the decoded speech is muxed, not the given file (whose
    larger video track ffmpeg would otherwise pick, closing the pipe of ours). Also with --stream-audio."""
    movie, face, out = tmp_path / "speech.mp4", tmp_path / "portrait.png", tmp_path / "talk.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=256x256:rate=10", "-f", "lavfi",
                    "-i", "sine=frequency=300:sample_rate=16000", "-t", "2", "-c:v", "libx264", "-c:a", "aac",
                    str(movie)], check=True)
    portrait(1).save(face)
    result = generate("--image", str(face), "--audio", str(movie), "--out", str(out), *options)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    info = probe(out)
    assert sorted(s["codec_type"] for s in info["streams"]) == ["audio", "video"]
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"], int(video["nb_frames"])) == (128, 128, 40)  # ours: 2 s at 20 fps
    assert abs(float(info["format"]["duration"]) - 2.0) < 0.1


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
