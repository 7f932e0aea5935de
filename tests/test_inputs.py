"""Every odd or bad input, through the session API, the command line and the app: one sentence, or it works.

With LIVEACT_DOCS=1 the table of docs/INPUTS.md is written from these cases and the messages they give.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from liveact.__main__ import main
from liveact.audio import SAMPLE_RATE, save_wav
from liveact.inputs import LiveActInputError, LiveActInputWarning
from liveact.synthetic import portrait, speech

MAX_SECONDS = 5.0  # the audio limit these tests configure
NON_LATIN = "一个人在说话 · человек говорит · شخص يتحدث"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _huge_png_header(path: Path, small: Path, width: int = 20000, height: int = 20000) -> Path:
    """A real PNG whose header says 20000x20000 (the pixels are a small image's: only the header is read)."""
    data = bytearray(small.read_bytes())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29], data[29:33] = header, struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    face = portrait(7_000_321)
    face.save(folder / "portrait.png")
    face.convert("L").save(folder / "gray.png")
    face.convert("CMYK").save(folder / "cmyk.jpg")
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.new("L", face.size, 128))
    rgba.save(folder / "rgba.png")
    Image.fromarray((np.asarray(face.convert("L"), np.uint16) * 257)).save(folder / "16bit.png")
    face.save(folder / "animated.gif", save_all=True, append_images=[face.rotate(10), face.rotate(20)], duration=100)
    face.resize((8, 8)).save(folder / "tiny.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is a text file, renamed")
    (folder / "truncated.png").write_bytes((folder / "portrait.png").read_bytes()[:2000])
    _huge_png_header(folder / "huge.png", folder / "tiny.png")

    voice = save_wav(folder / "speech.wav", speech(2.0, 7_000_321), SAMPLE_RATE)
    save_wav(folder / "silent.wav", np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    save_wav(folder / "zero.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    save_wav(folder / "0.1s.wav", speech(2.0, 7_000_321)[:SAMPLE_RATE // 10], SAMPLE_RATE)
    save_wav(folder / "long.wav", speech(MAX_SECONDS + 3, 7_000_321), SAMPLE_RATE)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is a text file, renamed")
    (folder / "truncated.wav").write_bytes(voice.read_bytes()[:144])  # the header and 50 samples
    for name, options in {"8khz.wav": ["-ar", "8000"], "48khz.wav": ["-ar", "48000"], "stereo.wav": ["-ac", "2"],
                          "24bit.wav": ["-c:a", "pcm_s24le"], "float.wav": ["-c:a", "pcm_f32le"],
                          "speech.mp3": ["-c:a", "libmp3lame"]}.items():
        _ffmpeg("-i", str(voice), *options, str(folder / name))
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:d=2", "-i", str(voice), "-c:v", "libx264", "-c:a", "aac",
            "-shortest", str(folder / "video.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:d=2", "-c:v", "libx264", str(folder / "mute.mp4"))
    return {path.name: path for path in folder.iterdir()}


# (what, the input, what happens: a message, or None = it works)
PORTRAITS = [
    ("an empty file", "empty.png", "is an empty file"),
    ("a truncated file", "truncated.png", "is truncated or damaged"),
    ("a text file renamed .png", "text.png", "is not an image liveact can read"),
    ("a huge image (20000x20000 header)", "huge.png", "at most 64 megapixels"),
    ("a tiny image (8x8)", "tiny.png", "at least 64 pixels on each side"),
    ("grayscale", "gray.png", None),
    ("CMYK (jpg)", "cmyk.jpg", None),
    ("RGBA (half transparent)", "rgba.png", None),
    ("16-bit grayscale", "16bit.png", None),
    ("animated (gif)", "animated.gif", None),
]
SPEECH = [
    ("an empty file", "empty.wav", "is empty"),
    ("a truncated file (header and 50 samples)", "truncated.wav", "give at least 0.1 s"),
    ("a text file renamed .wav", "text.wav", "cannot decode text.wav as audio"),
    ("0 s", "zero.wav", "holds no sound"),
    ("0.1 s", "0.1s.wav", None),
    ("silent", "silent.wav", None),
    ("8 kHz", "8khz.wav", None),
    ("48 kHz", "48khz.wav", None),
    ("stereo", "stereo.wav", None),
    ("24-bit", "24bit.wav", None),
    ("32-bit float", "float.wav", None),
    ("mp3", "speech.mp3", None),
    ("a video file's audio track", "video.mp4", None),
    ("a video file without sound", "mute.mp4", "has no audio track"),
    (f"longer than the limit ({MAX_SECONDS:g} s here)", "long.wav", f"the limit here is {MAX_SECONDS:.0f} s"),
]
PROMPTS = [
    ("empty", "", None),
    ("very long (5000 characters)", "talking " * 625, "at most 2000"),
    ("non-Latin", NON_LATIN, None),
]
EDITS = [  # session API and CLI: chunk ranges; the app: seconds. (API and CLI message, the app's message)
    ("out of order", [(3, 1, "smile")], {"[3, 0]": "smile"}, "8-4: smile", ("out of order", "ends before it starts")),
    ("out of bounds", [(50, None, "smile")], {"[50, 60]": "smile"}, "30-35: smile",
     ("after the video ends", "after the speech ends")),  # API and CLI: left out with a warning; the app refuses it
]


def _make(pipe, files, tmp_path, image="portrait.png", audio="speech.wav", prompt="a person is talking", edits=()):
    return pipe.generate(files[image], files[audio], tmp_path / "out.mp4", prompt=prompt, edits=edits, progress=False,
                         max_audio_seconds=MAX_SECONDS)


def _cli(capsys, files, tmp_path, image="portrait.png", audio="speech.wav", prompt="a person is talking", edits=None):
    args = ["generate", "--image", str(files[image]), "--audio", str(files[audio]), "--out", str(tmp_path / "cli.mp4"),
            "--prompt", prompt, "--max-audio-seconds", str(MAX_SECONDS)]
    if edits is not None:
        (tmp_path / "edits.json").write_text(json.dumps(edits))
        args += ["--edit-json", str(tmp_path / "edits.json")]
    code = main(args)
    return code, capsys.readouterr().err


def _assert_one_sentence(code: int, err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err and "/tmp/" not in err  # and never a folder of the machine


CASES = [("image", *case) for case in PORTRAITS] + [("audio", *case) for case in SPEECH] + \
        [("prompt", *case) for case in PROMPTS]  # the keyword of _make and _cli that takes the input


@pytest.mark.parametrize("given, what, value, message", CASES, ids=[f"{case[0]}-{case[1]}" for case in CASES])
def test_each_input(tiny_pipeline, files, tmp_path, capsys, given, what, value, message):
    if message is None and given == "image":
        portrait = tiny_pipeline.start(files[value]).portrait
        assert portrait.mode == "RGB" and portrait.size == (128, 128)
        assert 40 < np.asarray(portrait).mean() < 250  # converted, not blacked or whited out
    elif message is None:
        assert _make(tiny_pipeline, files, tmp_path, **{given: value}).stat().st_size > 0
    else:
        with pytest.raises(LiveActInputError, match=message):
            _make(tiny_pipeline, files, tmp_path, **{given: value})
        _assert_one_sentence(*_cli(capsys, files, tmp_path, **{given: value}), message)


def test_edit_out_of_order_is_refused(tiny_pipeline, files, tmp_path, capsys):
    _, edits, spec, _, messages = EDITS[0]
    with pytest.raises(LiveActInputError, match=messages[0]):
        _make(tiny_pipeline, files, tmp_path, edits=edits)
    _assert_one_sentence(*_cli(capsys, files, tmp_path, edits=spec), messages[0])


def test_edit_after_the_end_is_left_out_with_a_warning(tiny_pipeline, files, tmp_path, capsys):
    """As the reference, which never reaches it: the video is made, and the CLI says so in one line."""
    _, edits, spec, _, messages = EDITS[1]
    with pytest.warns(LiveActInputWarning, match=messages[0]):
        assert _make(tiny_pipeline, files, tmp_path, edits=edits).stat().st_size > 0
    code, err = _cli(capsys, files, tmp_path, edits=spec)
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert code == 0 and len(warned) == 1 and messages[0] in warned[0] and "Traceback" not in err, err


@pytest.fixture(scope="module")
def studio(files):
    from liveact.app import Studio

    studio = Studio("tiny")
    studio.uploads.append(next(iter(files.values())).parent)  # as if uploaded
    yield studio
    studio.close()


def _app(studio, files, image="portrait.png", audio="speech.wav", prompt="a person is talking", edits=""):
    import gradio as gr

    request = SimpleNamespace(session_hash="inputs")
    studio.limits.max_audio_seconds = MAX_SECONDS
    try:
        for _ in studio.generate(str(files[image]), str(files[audio]), "", prompt, edits, 1, "conv", 1.0, False,
                                 None, request):
            pass
    except gr.Error as error:
        return error.message
    finally:
        studio.end("inputs")
    return None


def test_the_app_says_the_same_sentence(studio, files):
    """Each bad input in the app: the same sentence as a gr.Error in the page (the browser test shows one)."""
    for _, name, message in [case for case in PORTRAITS if case[2]]:
        assert message in (_app(studio, files, image=name) or ""), name
    for _, name, message in [case for case in SPEECH if case[2]]:
        assert message in (_app(studio, files, audio=name) or ""), name
    assert "at most 2000" in _app(studio, files, prompt=PROMPTS[1][1])
    for _, _, _, text, messages in EDITS:
        assert messages[1] in _app(studio, files, edits=text), text
    assert "was not uploaded to this server" in _app(studio, {**files, "x": Path("/etc/hostname")}, image="x")
    studio.limits.max_upload_mb = 0.01
    assert "larger than 0.01 MB" in _app(studio, files, audio="long.wav")
    studio.limits.max_upload_mb = 50
    assert _app(studio, files, audio="stereo.wav") is None  # and a good request still works


def _sentence(check, *args) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LiveActInputWarning)
        try:
            check(*args)
        except LiveActInputError as error:
            return f"refused: “{error}”"
    ours = [warning.message for warning in caught if issubclass(warning.category, LiveActInputWarning)]
    return f"works, with a warning: “{ours[0]}”" if ours else "works"


def test_docs_table(files):
    """docs/INPUTS.md's table: each case above and the sentence it gets (written with LIVEACT_DOCS=1)."""
    from liveact.audio import load_audio
    from liveact.inputs import check_edits, check_prompt, read_portrait

    rows = [("portrait", what, _sentence(read_portrait, files[name])) for what, name, _ in PORTRAITS]
    rows += [("speech", what, _sentence(load_audio, files[name], SAMPLE_RATE, MAX_SECONDS)) for what, name, _ in SPEECH]
    rows += [("prompt", what, _sentence(check_prompt, prompt)) for what, prompt, _ in PROMPTS]
    rows += [("prompt edits", what, _sentence(check_edits, edits, 3)) for what, edits, *_ in EDITS]
    table = "\n".join(["| input | case | what happens |", "| --- | --- | --- |",
                       *(f"| {kind} | {what} | {outcome} |" for kind, what, outcome in rows)])
    document = ROOT / "docs" / "INPUTS.md"
    if os.environ.get("LIVEACT_DOCS"):
        text = document.read_text()
        start, end = text.index("<!-- table -->") + len("<!-- table -->"), text.index("<!-- /table -->")
        document.write_text(text[:start] + "\n" + table + "\n" + text[end:])
    assert table in document.read_text(), "docs/INPUTS.md is out of date: LIVEACT_DOCS=1 pytest tests/test_inputs.py"
