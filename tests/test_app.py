"""The web app in a real browser (Debian chromium, headless, through Playwright) and through its API.

Measured here and written to LIVEACT_APP_REPORT (default: the test's temp folder) as JSON: time from the
click on Generate to the first frame on screen, and playback after it (stalls, video seconds per wall
second), three first clicks. LIVEACT_TIMING=1 also asserts the targets (median first frame <= 2 s, no
stalls). They held in every measured run here (docs/APP.md), but they stay opt-in: a CI machine's load is
not ours to control, and a busy core once gave 2.55 s.
With LIVEACT_DOCS=1 the mid-stream screenshot is also saved as docs/app-streaming.png.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, probe
from liveact.audio import save_wav
from liveact.synthetic import SAMPLE_RATE, speech

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is missing (make installs it)")

VIDEO_TIME = "() => { const v = document.querySelector('#video video'); return v ? v.currentTime : 0; }"
# media events do not bubble, but a capturing listener on the document hears every <video> the page makes
RECORD_EVENTS = """() => { window.__events = {};
    for (const name of ['loadeddata', 'playing', 'waiting'])
        document.addEventListener(name, () => (window.__events[name] = window.__events[name] || []).push(performance.now()), true); }"""
CLICK = "(selector) => { const t = performance.now(); document.querySelector(selector).click(); return t; }"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    microphone = save_wav(tmp_path_factory.mktemp("mic") / "voice.wav", speech(30.0, 7_000_555), SAMPLE_RATE)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1100}, permissions=["microphone"])
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_selector("#generate")
    yield page
    context.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = Path(os.environ.get("LIVEACT_APP_REPORT", tmp_path_factory.mktemp("report") / "app.json"))
    measured: dict = {}
    yield measured
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(measured, indent=2) + "\n")
    print(f"\nbrowser measurements ({path}):\n{json.dumps(measured, indent=2)}")


def wait_until(condition, timeout: float, every: float = 0.05):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {condition.__doc__ or condition}")


def playing(page, after: float = 0.0) -> bool:
    return page.evaluate(VIDEO_TIME) > after


def choose_example(page, number: int) -> None:
    """Click an example row and wait until its speech is in the audio input."""
    page.get_by_text(f"speech-{number}.wav").click()
    page.wait_for_function("(name) => (document.querySelector('#speech a[data-testid=download-link]')?.href || '').includes(name)",
                           arg=f"speech-{number}.wav")


def upload_speech(page, path: Path) -> None:
    page.locator("#speech button[aria-label='Clear']").click()
    page.locator("#speech input[type=file]").set_input_files(str(path))
    page.wait_for_function("(name) => (document.querySelector('#speech a[data-testid=download-link]')?.href || '').includes(name)",
                           arg=path.name)


def generate_and_watch(page, server, seconds: float = 6.0) -> dict:
    """Click an example and Generate; the first frame's time after the click (the page's own media events), then
    `seconds` of watching: stalls, video seconds per wall second, whether it played while the server generated."""
    choose_example(page, 1)
    page.evaluate(RECORD_EVENTS)
    clicked = page.evaluate(CLICK, "#generate")
    wait_until(lambda: playing(page), timeout=10)
    first_frame_s = (page.evaluate("() => window.__events.loadeddata[0]") - clicked) / 1000
    first_stats = page.inner_text("#stats")
    began, start_time, advanced_while_generating = time.perf_counter(), page.evaluate(VIDEO_TIME), False
    while time.perf_counter() - began < seconds:
        before = page.evaluate(VIDEO_TIME)
        time.sleep(0.25)
        advanced_while_generating |= page.evaluate(VIDEO_TIME) > before and server.studio.active() == 1
    played = (page.evaluate(VIDEO_TIME) - start_time) / (time.perf_counter() - began)
    events = page.evaluate("() => window.__events")
    return {"first_frame_after_click_s": round(first_frame_s, 2), "video_seconds_per_wall_second": round(played, 3),
            "stalls_after_start": sum(1 for t in events.get("waiting", []) if t > events["playing"][0]),
            "advanced_while_generating": advanced_while_generating, "stats": [first_stats, page.inner_text("#stats")]}


def test_an_example_streams_while_it_is_generated(page, server, report):
    runs = [generate_and_watch(page, server)]
    page.evaluate("() => window.scrollTo(0, 0)")  # the video and its statistics, mid-stream
    page.screenshot(path=str(server.sessions.parent / "app-streaming.png"))
    if os.environ.get("LIVEACT_DOCS"):
        page.screenshot(path=str(ROOT / "docs" / "app-streaming.png"))
    wait_until(lambda: page.locator("#download a").count() > 0, timeout=60)  # then the whole mp4
    for _ in range(2):  # two more first clicks on fresh pages: each number is the median of three
        wait_until(lambda: server.studio.active() == 0, timeout=60)
        page.goto(server.url)
        page.wait_for_selector("#generate")
        runs.append(generate_and_watch(page, server))
    median = lambda key: float(np.median([run[key] for run in runs]))  # noqa: E731
    report["example"] = {"runs": runs, **{f"median_{key}": median(key) for key in
                                          ("first_frame_after_click_s", "stalls_after_start", "video_seconds_per_wall_second")}}
    for run in runs:
        assert run["advanced_while_generating"], "the video only played once generation had finished"
        first, last = run["stats"]
        assert "ms per chunk" in last and "MiB" in last and first != last  # the stats update chunk by chunk
    if os.environ.get("LIVEACT_TIMING"):  # the speed targets: opt-in, a shared machine's load is not ours to
        # control (docs/APP.md has the measurements); the behaviour above is always checked
        assert median("first_frame_after_click_s") <= 2.0, runs
        assert median("stalls_after_start") == 0 and median("video_seconds_per_wall_second") > 0.95, runs


def test_stop_ends_the_session_mid_stream(page, server, tmp_path):
    long_speech = save_wav(tmp_path / "long.wav", speech(60.0, 7_000_777), SAMPLE_RATE)
    choose_example(page, 2)  # an identity; its speech replaced by a long upload
    upload_speech(page, long_speech)
    before = set(server.sessions.iterdir())
    page.click("#generate")
    wait_until(lambda: playing(page), timeout=10)
    assert server.studio.active() == 1
    folders = set(server.sessions.iterdir()) - before
    page.click("#stop")
    wait_until(lambda: server.studio.active() == 0, timeout=5)
    wait_until(lambda: not any(folder.exists() for folder in folders), timeout=5)  # its segments are deleted


def test_a_bad_upload_shows_an_error_and_the_next_request_works(page, server, tmp_path):
    fake = tmp_path / "speech.wav"
    fake.write_text("this is not audio at all")
    choose_example(page, 3)
    page.locator("#speech button[aria-label='Clear']").click()
    page.locator("#speech input[type=file]").set_input_files(str(fake))
    page.wait_for_timeout(1000)
    page.click("#generate")
    page.get_by_text("cannot decode", exact=False).first.wait_for(timeout=10_000)
    page.screenshot(path=str(tmp_path / "bad-upload.png"))
    choose_example(page, 3)
    page.click("#generate")
    wait_until(lambda: playing(page), timeout=10)


def test_the_microphone_drives_the_video_live(page, server, report):
    choose_example(page, 4)  # the portrait (its speech file is not used: the microphone speaks)
    page.locator("#mic").get_by_role("button", name="Record").click()
    started = time.perf_counter()
    wait_until(lambda: playing(page), timeout=20)
    first_frame_s = time.perf_counter() - started
    wait_until(lambda: "chunk" in page.inner_text("#stats"), timeout=5)
    assert server.studio.active() == 1
    page.locator("#mic").get_by_role("button", name="Stop").click()
    wait_until(lambda: server.studio.active() == 0, timeout=15)
    report["microphone"] = {"first_frame_after_record_s": round(first_frame_s, 2)}


def test_the_api_endpoint_returns_the_whole_video(server, tmp_path):
    from gradio_client import Client, handle_file

    portrait = sorted(server.examples.glob("person-*.png"))[0]
    voice = save_wav(tmp_path / "voice.wav", speech(4.0, 7_000_999), SAMPLE_RATE)
    client = Client(server.url, verbose=False, download_files=str(tmp_path))
    outputs = client.predict(handle_file(str(portrait)), handle_file(str(voice)), "", "a person is talking", "",
                             7, "conv", 1.0, False, "512*512", api_name="/generate")
    movie = next(Path(o) for o in outputs if isinstance(o, str) and o.endswith(".mp4"))
    info = probe(movie)
    assert abs(float(info["format"]["duration"]) - 4.0) < 1.7  # whole chunks: at most one chunk more
    assert {s["codec_type"] for s in info["streams"]} == {"video", "audio"}
    assert np.isfinite(float(info["format"]["duration"]))
