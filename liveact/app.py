"""The web demo: a portrait and speech in, talking video streamed out as it is generated.

    python app.py [--host 127.0.0.1] [--port 7860] [--model tiny]      (or LIVEACT_MODEL=liveact-18b)

Three ways to give speech: an audio file (or a recording), a sentence spoken by a local text-to-speech
engine, or live from the microphone (video follows the voice for as long as the visitor talks). Each
chunk is sent to the browser as an H.264 segment the moment it is decoded; at the end the whole video
is offered as an mp4. One generation runs per device at a time; the others wait in the queue.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from . import release
from .audio import SAMPLE_RATE, load_audio, save_wav
from .hub import LiveActError
from .inputs import Limits, LiveActInputError, check_speech_length, read_portrait
from .kernels import ATTENTION_BACKENDS
from .pipeline import LiveActPipeline, Options, is_released, load
from .serve import Broadcast, log_heap, parse_edits, release_free_memory
from .synthetic import portrait as synthetic_portrait, speech
from .tts import speak

EXAMPLE_SEEDS = (7_000_101, 7_000_202, 7_000_303, 7_000_404)  # held-out identities of the synthetic world
EXAMPLE_SECONDS = 20.0
PLOT_EVERY = 4  # chunks between redraws of the latency plot
SESSION_STATES = 8  # Gradio keeps a copy of a visitor's outputs for an hour after they leave: at most this many,
# the least recently active dropped first (our handlers read nothing back from them; docs/RELIABILITY.md)


def load_model(name: str, workers: int = 1, **load_kwargs):
    """(pipeline, worker pool or None, notice): the model asked for -- on `workers` processes, one per GPU, with
    `load_kwargs` for `liveact.load` (wav2vec, size) -- or the tiny one with a sentence saying why not (no
    weights, no GPU)."""
    try:
        if workers > 1:
            from .workers import WorkerPool

            pool = WorkerPool(name, workers, **load_kwargs)
            return pool.pipe, pool, ""
        return load(name, **load_kwargs), None, ""
    except RuntimeError as error:  # LiveActError, or a worker that could not load the model
        if name == "tiny":
            raise
        return load("tiny"), None, f"**{name} is not available here, so this demo runs the tiny model:** {error}"


def write_examples(folder: Path, size: int) -> list[tuple[str, str]]:
    """Portraits of unseen synthetic identities and speech for them (made once, at start-up)."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for number, seed in enumerate(EXAMPLE_SEEDS, 1):
        portrait, voice = folder / f"person-{number}.png", folder / f"speech-{number}.wav"
        if not portrait.exists():
            synthetic_portrait(seed, size).save(portrait)
        if not voice.exists():
            save_wav(voice, speech(EXAMPLE_SECONDS, seed), SAMPLE_RATE)
        examples.append((str(portrait), str(voice)))
    return examples


class Portrait(gr.Image):
    """An image upload that reaches liveact as the uploaded file, unopened: a bad file gets liveact's own
    one-sentence error (`inputs.read_portrait`), not the image library's traceback."""

    is_template = True  # the page draws it as a gr.Image

    def preprocess(self, payload):
        return None if payload is None else payload.path


class Studio:
    """The app's state: the model, the limits, and every viewer's broadcast (one per browser tab).

    A tab's broadcast lives from Generate until the tab's next Generate, Stop, or the tab closing; after the
    stream it only holds the mp4 offered for download. Its folder sits in Gradio's cache (`root`), so Gradio
    serves that mp4 without a copy, and deleting the folder deletes everything the session wrote."""

    def __init__(self, model: str = "tiny", limits: Limits | None = None, root: str | Path | None = None,
                 workers: int = 1, **load_kwargs):
        self.pipe, self.pool, self.notice = load_model(model, workers, **load_kwargs)
        self.start = self.pool.start if self.pool is not None else self.pipe.start
        self.limits = limits or Limits.from_env()
        self.root = Path(root or Path(gr.utils.get_upload_folder()) / "liveact-sessions")
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads: list[Path] = [Path(gr.utils.get_upload_folder()).resolve()]  # where user files may be read
        self.broadcasts: dict[str, Broadcast] = {}
        self._lock = threading.Lock()
        self._warm_up()

    def _warm_up(self) -> None:
        """At start-up, so the first visitor does not pay for compiling or lazy initialisation: the first chunks'
        shapes at every size offered on a GPU (on a CPU, where other sizes are for tests, the loaded one), then one
        chunk through a broadcast (the video segments' writer)."""
        on_gpu = torch.device(self.pipe.options.device).type == "cuda"
        self.pipe.warm_up(self.pipe.sizes if on_gpu else self.pipe.sizes[:1], start=self.start)
        with Broadcast(self.start(synthetic_portrait(EXAMPLE_SEEDS[0], self.pipe.size[0])),
                       root=self.root) as broadcast:
            broadcast.feed(speech(1.0, EXAMPLE_SEEDS[0]), SAMPLE_RATE)
            broadcast.finish()
            next(broadcast.segments())

    # -- sessions -----------------------------------------------------------------------------------

    def _open(self, key: str, portrait, prompt: str, seed: float, edits: str, memory: str, guidance: float,
              fp8: bool, size: str | None, began: float, seconds: float | None = None, keep: bool = True) -> Broadcast:
        self.end(key)  # a new generation replaces the tab's previous one
        if not portrait:
            raise LiveActInputError("choose a portrait first (upload one or click a ready identity).")
        image = read_portrait(self._user_file(portrait, "portrait"))
        pipe = self.pipe
        stream = replace(pipe.options.stream, compression=memory, audio_guidance=float(guidance), fp8_memory=bool(fp8))
        live = self.start(image, prompt or "", int(seed), parse_edits(edits or "", pipe.geometry, pipe.fps, seconds),
                          stream=stream, size=size if resizable(pipe) else None)
        broadcast = Broadcast(live, root=self.root, max_seconds=self.limits.max_session_seconds, began=began, keep=keep)
        with self._lock:
            self.broadcasts[key] = broadcast
            finished = [k for k, b in self.broadcasts.items() if b.done and k != key]
        for old in finished[:max(0, len(finished) - self.limits.max_queue)]:  # API clients never close a tab
            self.end(old)
        return broadcast

    def _user_file(self, path: str, what: str) -> Path:
        """Only files the user gave: uploads (in Gradio's upload folder) and the examples, never another path."""
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(folder) for folder in self.uploads):
            raise LiveActInputError(f"the {what} was not uploaded to this server; upload the file itself.")
        if resolved.is_file() and resolved.stat().st_size > self.limits.max_upload_mb * 2**20:
            raise LiveActInputError(f"the {what} file is larger than {self.limits.max_upload_mb:g} MB.")
        return resolved

    def end(self, key: str) -> None:
        """Stop a tab's broadcast and delete its segments (Stop, a new generation, or the tab closing)."""
        with self._lock:
            broadcast = self.broadcasts.pop(key, None)
        if broadcast is not None:
            broadcast.close()
            release_free_memory()
            log_heap()

    def close(self) -> None:
        for key in list(self.broadcasts):
            self.end(key)
        if self.pool is not None:
            self.pool.close()

    def active(self) -> int:
        """Broadcasts still generating."""
        with self._lock:
            return sum(not broadcast.done for broadcast in self.broadcasts.values())

    def _speech(self, audio_path: str | None, text: str | None) -> np.ndarray:
        if audio_path:
            return load_audio(self._user_file(audio_path, "speech"), max_seconds=self.limits.max_audio_seconds)
        if text and text.strip():
            samples = speak(text)
            check_speech_length(len(samples) / SAMPLE_RATE, self.limits.max_audio_seconds)
            return samples
        raise LiveActInputError("give some speech: an audio file, a recording, or a sentence to say.")

    # -- the events -----------------------------------------------------------------------------------

    def generate(self, portrait, audio_path, text, prompt, edits, seed, memory, guidance, fp8, size,
                 request: gr.Request):
        """Speech given at once (file, recording or sentence): stream every chunk, then offer the mp4."""
        began, key = time.perf_counter(), _key(request)
        with _as_page_errors():
            samples = self._speech(audio_path, text)
            broadcast = self._open(key, portrait, prompt, seed, edits, memory, guidance, fp8, size, began,
                                   seconds=len(samples) / SAMPLE_RATE)
        try:
            broadcast.feed(samples, SAMPLE_RATE)
            broadcast.finish()
            yield from self._stream(broadcast)
            movie = broadcast.movie()
            if movie is not None:
                yield {"download": str(movie)}
        except BaseException:  # an error, Stop, or the tab gone: nothing of the session is kept
            self.end(key)
            raise

    def go_live(self, portrait, prompt, edits, seed, memory, guidance, fp8, size, request: gr.Request):
        """The microphone is recording: stream video for as long as speech arrives (see `hear`)."""
        began, key = time.perf_counter(), _key(request)
        with _as_page_errors():
            broadcast = self._open(key, portrait, prompt, seed, edits, memory, guidance, fp8, size, began,
                                   keep=False)  # a live session may run for the session limit: no mp4 kept
        try:
            yield from self._stream(broadcast)
        finally:
            self.end(key)

    def hear(self, chunk, request: gr.Request) -> None:
        """A piece of microphone audio (sample rate, int16 samples) for this tab's live broadcast."""
        broadcast = self.broadcasts.get(_key(request))
        if broadcast is not None and chunk is not None:
            broadcast.feed(chunk[1], chunk[0])

    def quiet(self, request: gr.Request) -> None:
        """The microphone stopped: the broadcast finishes the speech it has."""
        broadcast = self.broadcasts.get(_key(request))
        if broadcast is not None:
            broadcast.finish()

    def stop(self, request: gr.Request) -> None:
        self.end(_key(request))

    def _stream(self, broadcast: Broadcast):
        with _as_page_errors():  # e.g. a fault in the speech found only when its chunk is made
            for segment in broadcast.segments():
                stats = broadcast.stats
                update = {"video": str(segment), "stats": stats.markdown()}
                if stats.chunk % PLOT_EVERY == 0 and stats.chunk:  # a redraw costs the browser CPU: not every chunk
                    update["latency"] = latency_frame(stats)
                yield update
        yield {"latency": latency_frame(broadcast.stats)}


@contextlib.contextmanager
def _as_page_errors():
    """A problem the visitor can fix, shown in the page as one sentence."""
    try:
        yield
    except (LiveActError, LiveActInputError) as error:
        raise gr.Error(str(error)) from None


def resizable(pipe: LiveActPipeline) -> bool:
    """The released model runs at any of the reference's resolutions; a trained tiny model at its own only."""
    return pipe.released


def _key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def latency_frame(stats):
    import pandas as pd

    return pd.DataFrame({"chunk": range(len(stats.latencies_ms)), "ms": stats.latencies_ms})


# -- the page --------------------------------------------------------------------------------------------

def build(studio: Studio, examples_folder: str | Path) -> gr.Blocks:
    pipe = studio.pipe
    examples = write_examples(Path(examples_folder), pipe.size[0])
    studio.uploads.append(Path(examples_folder).resolve())
    with gr.Blocks(title="liveact: real-time talking heads", delete_cache=(600, 1800)) as demo:
        gr.Markdown("# liveact\nA portrait and speech in, a talking video **streamed as it is generated** "
                    f"(model: `{pipe.name}`, {pipe.size[1]}x{pipe.size[0]} at {pipe.fps:g} fps).")
        if studio.notice:
            gr.Markdown(studio.notice, elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                portrait = Portrait(label="Portrait", type="filepath", sources=["upload", "clipboard"], height=256, elem_id="portrait")
                gr.Examples([[p] for p, _ in examples], inputs=[portrait], label="Ready identities")
                audio = gr.Audio(label="Speech (file or recording)", sources=["upload", "microphone"], type="filepath",
                                 elem_id="speech")
                text = gr.Textbox(label="…or type a sentence to say", placeholder="Hello! I am generated as you watch.")
                prompt = gr.Textbox(label="Prompt", value="a person is talking")
                with gr.Accordion("Advanced", open=False):
                    edits = gr.Textbox(label="Prompt edits by time (one per line, seconds)",
                                       placeholder="4-8: the person smiles", lines=2)
                    seed = gr.Number(label="Seed", value=42, precision=0)
                    memory = gr.Radio(["conv", "mean"], value="conv", label="Memory (ConvKV compression)")
                    guidance = gr.Slider(1.0, 8.0, value=1.0, step=0.5, label="Audio guidance (CFG)")
                    # the loaded size first; the reference's sizes too, hidden (API clients may name them) for a tiny model
                    size = gr.Dropdown(list(dict.fromkeys((*pipe.sizes, *release.SIZES))), value=pipe.sizes[0],
                                       label="Resolution (18B model)", visible=resizable(pipe))
                    fp8 = gr.Checkbox(label="fp8 key/value memory", value=False)
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                gr.Examples([[p, a, "a person is talking"] for p, a in examples], inputs=[portrait, audio, prompt],
                            label="Examples: click one, then Generate")
            with gr.Column(scale=1):
                video = gr.Video(label="Live video", streaming=True, autoplay=True, elem_id="video", height=320)
                stats = gr.Markdown("Press **Generate**.", elem_id="stats")
                latency = gr.LinePlot(x="chunk", y="ms", title="ms per chunk", height=180, elem_id="latency")
                download = gr.File(label="Whole video (mp4)", elem_id="download")
                gr.Markdown("**Live:** record with the microphone below; the video follows your voice.")
                microphone = gr.Audio(label="Live microphone", sources=["microphone"], streaming=True, elem_id="mic")
        outputs = {"video": video, "stats": stats, "latency": latency, "download": download}

        def emit(fn):  # our handlers yield dicts keyed by name; Gradio wants them keyed by component
            @functools.wraps(fn)  # the same signature, so Gradio passes the gr.Request it asks for
            def handler(*args):
                for update in fn(*args):
                    yield {outputs[name]: value for name, value in update.items()}
            return handler

        settings = [edits, seed, memory, guidance, fp8, size]
        run = generate.click(emit(studio.generate), [portrait, audio, text, prompt, *settings], list(outputs.values()),
                             concurrency_id="device", concurrency_limit=1, api_name="generate", show_progress="minimal")
        live = microphone.start_recording(emit(studio.go_live), [portrait, prompt, *settings], list(outputs.values()),
                                          concurrency_id="device", concurrency_limit=1, api_visibility="private",
                                          show_progress="minimal")
        microphone.stream(studio.hear, [microphone], None, stream_every=0.5, concurrency_limit=None,
                          api_visibility="private")
        microphone.stop_recording(studio.quiet, None, None, concurrency_limit=None, api_visibility="private")
        stop.click(studio.stop, None, None, cancels=[run, live], concurrency_limit=None, api_visibility="private")
        demo.unload(studio.stop)
    demo.queue(max_size=studio.limits.max_queue)
    return demo


def default_threads() -> int:
    """On a CPU, one core is left to segment encoding and a browser on the same machine: with both cores
    (2-core machine) torch's threads and Chromium's decoder fight, and chunks take twice as long."""
    return int(os.environ.get("LIVEACT_THREADS", 0)) or max(1, (os.cpu_count() or 2) - 1)


def default_workers(model: str) -> int:
    """Every GPU for the released 18B model (the chunk's frames split across them); one process otherwise."""
    return torch.cuda.device_count() if is_released(model) and torch.cuda.device_count() > 1 else 1


def main(argv: list[str] | None = None) -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))  # Spaces set 0.0.0.0
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--model", default=os.environ.get("LIVEACT_MODEL", "tiny"),
                        help="tiny (default, CPU), liveact-18b (GPUs), or a model folder (the released LiveAct folder)")
    parser.add_argument("--wav2vec", default=os.environ.get("LIVEACT_WAV2VEC"),
                        help="the wav2vec2 folder for a released model folder (default: chinese-wav2vec2-base beside it)")
    parser.add_argument("--device", default=os.environ.get("LIVEACT_DEVICE"),
                        help="cpu, cuda (default: cuda for the released 18B model, else cpu)")
    parser.add_argument("--size", default=os.environ.get("LIVEACT_SIZE"),
                        help="WIDTH*HEIGHT the model starts at, offered first on the page (default: the model's own, 416*720 for the released model)")
    parser.add_argument("--compile", action="store_true", default=bool(os.environ.get("LIVEACT_COMPILE")),
                        help="torch.compile the transformer blocks (compiled at start-up, every size offered)")
    parser.add_argument("--fp8-gemm", action="store_true", default=bool(os.environ.get("LIVEACT_FP8_GEMM")),
                        help="the transformer blocks' matrix multiplies in fp8 (Ada/Hopper GPUs)")
    parser.add_argument("--overlap-decode", action="store_true", default=bool(os.environ.get("LIVEACT_OVERLAP_DECODE")),
                        help="decode each chunk while the next one denoises (a second CUDA stream)")
    parser.add_argument("--low-vram", type=float, metavar="GIB", default=os.environ.get("LIVEACT_LOW_VRAM"),
                        help="fit a GPU of this many GiB (see `python -m liveact generate --help`)")
    parser.add_argument("--attention", choices=ATTENTION_BACKENDS, default=os.environ.get("LIVEACT_ATTENTION", "sdpa"),
                        help="attention kernel (see `python -m liveact generate --help`)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for the model (default: all cores but one, left to encoding and the browser)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("LIVEACT_WORKERS", 0)) or None,
                        help="processes, one per GPU, that share every session (default: every GPU for the 18B "
                             "model, else 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    workers = args.workers or default_workers(args.model)
    options = Options(compile=args.compile, fp8_gemm=args.fp8_gemm, overlap_decode=args.overlap_decode,
                      attention=args.attention, low_vram=args.low_vram)
    studio = Studio(args.model, workers=workers, wav2vec=args.wav2vec, size=args.size, device=args.device,
                    options=options)
    examples = Path(tempfile.gettempdir()) / "liveact-examples"
    demo = build(studio, examples)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(examples)],
                max_file_size=f"{studio.limits.max_upload_mb:g}mb", state_session_capacity=SESSION_STATES)
