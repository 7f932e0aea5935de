"""Command line.

    python -m liveact generate --image portrait.png --audio speech.wav --out talk.mp4
    python -m liveact train denoiser | autoencoder | reader   (the tiny scale, on the synthetic world)
    python -m liveact eval --model tiny --minutes 5       (long rollouts scored: lip sync, drift, flicker)
    python -m liveact bench [--long-minutes 30] [--flops] (speed, constant memory, the 18B model's cost)
    python -m liveact soak --sessions 100 --live-minutes 60  (nothing leaks: RSS and temp files stay flat)
    python -m liveact world sheet | autoencoder-bench     (docs figures of the synthetic world)
    python -m liveact audio-compare speech.wav --fps 20   (our speech preprocessing against the reference's)

Also runs the reference's example files: `python -m liveact generate --input-json examples.json --out outdir/`
(entries with `prompt`, `cond_image`, `cond_audio` and optional `edit_prompt` {"[a, b]": "prompt"}).
Under `torchrun --nproc-per-node 2` the chunk is split over the GPUs (sequence parallelism).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import warnings
from pathlib import Path

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_edits(spec: dict[str, str]) -> list[tuple[int, int | None, str]]:
    """{"[a, b]": prompt} (inclusive chunk ranges, as the reference) -> [(a, b + 1, prompt)], in the given order:
    where ranges overlap the first wins, as in the reference."""
    from .inputs import LiveActInputError, check_edits

    edits = []
    for chunk_range, prompt in spec.items():
        try:
            first, last = ast.literal_eval(chunk_range)
            edits.append((int(first), int(last) + 1, str(prompt)))
        except (ValueError, SyntaxError, TypeError):
            raise LiveActInputError(f"edit range {chunk_range!r} is not '[first_chunk, last_chunk]'.") from None
    return check_edits(edits)


def _read_json(path: str | Path, what: str):
    from .inputs import LiveActInputError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LiveActInputError(f"cannot read {what} {Path(path).name}: {error}.") from None


def _jobs(args) -> list[dict]:
    """One dict per video to make: from --input-json, or from --image/--audio."""
    from .inputs import LiveActInputError

    if args.input_json:
        entries = _read_json(args.input_json, "the input list")
        base = Path(args.input_json).parent
        locate = lambda p: Path(p) if Path(p).exists() else base / p  # noqa: E731 (relative to cwd, else the json)
        out_dir = Path(args.out or ".")
        return [dict(image=locate(e["cond_image"]), audio=locate(e["cond_audio"]), prompt=e.get("prompt", args.prompt),
                     edits=parse_edits(e.get("edit_prompt", {})),
                     out=out_dir / f"{Path(e['cond_image']).stem}_{Path(e['cond_audio']).stem}.mp4")
                for e in (entries if isinstance(entries, list) else [entries])]
    if not (args.image and args.audio and args.out):
        raise LiveActInputError("give --image, --audio and --out (or --input-json).")
    edits = parse_edits(_read_json(args.edit_json, "the edits")) if args.edit_json else []
    return [dict(image=Path(args.image), audio=Path(args.audio), prompt=args.prompt, edits=edits, out=Path(args.out))]


def generate(args) -> int:
    import torch

    from .audio import decode_audio
    from .hub import LiveActError
    from .inputs import Limits, LiveActInputError, LiveActInputWarning, check_prompt, read_portrait
    from .pipeline import Options, load
    from .stream import StreamConfig

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    stream = StreamConfig(compression="mean" if args.mean_memory else "conv", value_filter=args.value_filter,
                          fp8_memory=args.fp8_memory, offload_memory=args.offload_memory, audio_guidance=args.audio_cfg)
    options = Options(text_encoder_on_cpu=args.t5_cpu, compile=args.compile, attention=args.attention,
                      fp8_gemm=args.fp8_gemm, overlap_decode=args.overlap_decode, block_offload=args.block_offload,
                      low_vram=args.low_vram, stream=stream)
    limit = args.max_audio_seconds or Limits.from_env().max_audio_seconds
    try:
        jobs = _jobs(args)
        for job in jobs:  # every input checked before the model loads: a bad file fails in a second
            read_portrait(job["image"])
            decode_audio(job["audio"], max_seconds=limit)
            check_prompt(job["prompt"])
        pipe = load(args.model, device=args.device, dtype=dtype, size=args.size, fps=args.fps, options=options,
                    wav2vec=args.wav2vec)
        rank0 = pipe.parallel is None or pipe.parallel.rank == 0
        for job in jobs:
            with warnings.catch_warnings(record=True, action="always", category=LiveActInputWarning) as warned:
                out = pipe.generate(job["image"], job["audio"], job["out"], prompt=job["prompt"], seed=args.seed,
                                    edits=job["edits"], progress=rank0, max_audio_seconds=limit,
                                    stream_audio=args.stream_audio)
            if rank0:  # our warnings as one line each, as errors are printed; once, not on every rank
                for warning in (w for w in warned if issubclass(w.category, LiveActInputWarning)):
                    print(f"warning: {warning.message}", file=sys.stderr)
                print(out)
    except (LiveActError, LiveActInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from .kernels import ATTENTION_BACKENDS  # torch only: the parser stays quick to build

    parser = argparse.ArgumentParser(prog="python -m liveact", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="portrait + speech -> talking-head mp4 with the speech as sound")
    gen.add_argument("--image", help="portrait (png, jpg, ...)")
    gen.add_argument("--audio", help="speech (wav, mp3, m4a, flac, ogg, or a video's soundtrack; channel 0)")
    gen.add_argument("--stream-audio", action="store_true",
                     help="featurize each chunk's audio window alone, as a live stream (the reference's --steam_audio)")
    gen.add_argument("--out", help="output mp4 (a folder with --input-json)")
    gen.add_argument("--prompt", default="a person is talking", help="what the video shows")
    gen.add_argument("--edit-json", help='prompt edits by chunk range: {"[2, 5]": "the person smiles"}')
    gen.add_argument("--input-json", help="the reference's example format: a list of {prompt, cond_image, cond_audio, edit_prompt}")
    gen.add_argument("--model", default="tiny",
                     help="preset (tiny, liveact-18b) or model folder: the released LiveAct folder (the reference's --ckpt_dir)")
    gen.add_argument("--wav2vec", help="wav2vec2 folder (the reference's --wav2vec_dir; default: chinese-wav2vec2-base "
                                       "beside the model folder)")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--max-audio-seconds", type=float,
                     help="refuse longer speech (default: LIVEACT_MAX_AUDIO_SECONDS, else 300)")
    gen.add_argument("--size", help="WIDTH*HEIGHT: 512*512, 416*720 or 480*832 (default: the model's)")
    gen.add_argument("--fps", type=float, help="frames per second (default: the model's)")
    gen.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda for liveact-18b, else cpu)")
    gen.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on GPUs, fp32 on CPUs")
    gen.add_argument("--audio-cfg", type=float, default=1.0, help="audio classifier-free guidance (1 = off)")
    gen.add_argument("--mean-memory", action="store_true", help="compress the memory by a plain mean")
    gen.add_argument("--value-filter", choices=["key", "value"], default="key",
                     help="filter that compresses values: key = as released (default)")
    gen.add_argument("--fp8-memory", action="store_true", help="store the key/value memory as fp8 (e4m3)")
    gen.add_argument("--offload-memory", action="store_true", help="keep the key/value memory in CPU memory")
    gen.add_argument("--block-offload", action="store_true", help="stream transformer blocks from CPU memory")
    gen.add_argument("--low-vram", type=float, metavar="GIB", help="fit a GPU of this many GiB: the cheapest of "
                     "--t5-cpu, --fp8-memory, --fp8-gemm, --offload-memory and streamed blocks that fit (printed)")
    gen.add_argument("--t5-cpu", action="store_true", help="run the text encoder on the CPU")
    gen.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    gen.add_argument("--attention", choices=ATTENTION_BACKENDS, default="sdpa",
                     help="attention kernel: PyTorch's choice, one of SDPA's, or flash-attn / SageAttention")
    gen.add_argument("--fp8-gemm", action="store_true", help="the transformer blocks' matrix multiplies in fp8 "
                     "(Ada/Hopper GPUs)")
    gen.add_argument("--overlap-decode", action="store_true", help="decode each chunk while the next one denoises "
                     "(a second CUDA stream)")
    train = commands.add_parser("train", help="train a model of the tiny scale on the synthetic world")
    train.add_argument("what", choices=["denoiser", "autoencoder", "reader"])
    train.add_argument("--out", help="output folder (default: the shipped weights' folder)")
    train.add_argument("--steps", type=int, help="optimizer steps (default: the shipped run's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--objective", choices=["neighbor", "teacher", "diffusion"], default="neighbor",
                       help="denoiser: what earlier chunks leave in memory during training")
    train.add_argument("--memory", choices=["conv", "mean", "sliding", "full"], default="conv",
                       help="denoiser: how the memory window summarises the past")
    train.add_argument("--device", help="denoiser: cpu or cuda (default: cuda when there is one)")
    train.add_argument("--init", help="denoiser: start from this model folder's weights (fine-tune), e.g. tiny's")
    train.add_argument("--lr", type=float, help="denoiser: peak learning rate (default 1e-3)")
    evaluate = commands.add_parser("eval", help="long rollouts on unseen identities: lip sync, identity drift, flicker")
    evaluate.add_argument("--model", default="tiny", help="preset (tiny) or model folder")
    evaluate.add_argument("--minutes", type=float, default=5.0, help="video per rollout")
    evaluate.add_argument("--identities", type=int, default=10, help="unseen identities with held-out synthetic speech")
    shared = Path(os.environ.get("LIVEACT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    evaluate.add_argument("--real-speech", default=str(shared / "examples"),
                          help="folder with speech-*.wav recordings (looped to --minutes); missing: skipped")
    evaluate.add_argument("--json", help="write the summary here")
    evaluate.add_argument("--plot", help="PNG of identity drift over time")
    evaluate.add_argument("--sheet", help="PNG of frames at 0 s, 10 s, 1, 2 and 5 min of each rollout")
    evaluate.add_argument("--label", help="the model's name in the table row")
    evaluate.add_argument("--precision", action="store_true", help="instead: plain, fp8 memory and fp8 memory + fp8 "
                          "GEMM on the same identities and noise (synthetic speech only), and each one's max pixel "
                          "difference from the plain video")
    bench = commands.add_parser("bench", help="speed, memory over long runs, the 18B model's FLOPs")
    bench.add_argument("--model", default="tiny", help="preset (tiny, liveact-18b) or model folder")
    bench.add_argument("--size", help="WIDTH*HEIGHT (default: the model's)")
    bench.add_argument("--device", help="cpu, cuda (default: the model's)")
    bench.add_argument("--seconds", type=float, default=30.0, help="speech per speed run")
    bench.add_argument("--runs", type=int, default=3, help="speed runs (headline numbers are their medians)")
    bench.add_argument("--long-minutes", type=float, help="also stream this many minutes per memory variant")
    bench.add_argument("--long-budget", type=float, default=900.0, help="wall seconds a long-run variant may take")
    bench.add_argument("--flops", action="store_true", help="also count the 18B config's FLOPs (meta device)")
    bench.add_argument("--gpu", action="store_true", help="instead: the 18B config with random weights on a GPU "
                       "(eager, fp8 memory, torch.compile); --markdown then writes docs/GPU.md")
    bench.add_argument("--suite", action="store_true", help="with --gpu: the attention kernels, then eager, compile, "
                       "fp8 GEMMs, the chosen kernel, overlapped decode and fp8 memory, cumulatively (issue #17)")
    bench.add_argument("--low-vram", type=float, nargs="+", metavar="GIB", help="with --gpu: instead, each card size "
                       "in turn, this GPU capped to it: the measures vram.fit takes, FPS, memory, bytes from host memory "
                       "and an RTX 4090 estimate (issue #18; --markdown writes its section of docs/GPU.md)")
    bench.add_argument("--chunks", type=int, help="chunks per variant with --gpu (default 6; 10 with --low-vram)")
    bench.add_argument("--budget-s", type=float, default=540.0, help="with --gpu: wall seconds it may take; "
                       "variants (or --low-vram cases) that would end later are skipped and named")
    bench.add_argument("--json", help="write the report here")
    bench.add_argument("--markdown", help="write the tables here (e.g. docs/BENCHMARKS.md)")
    bench.add_argument("--plot", help="PNG of latency and memory")
    fits = commands.add_parser("fit", help="what --low-vram takes to fit the 18B model on cards of a given size "
                               "(counted from the models' shapes)")
    fits.add_argument("--gib", type=float, nargs="+", default=[16, 24, 32, 48, 80], help="GPU memory sizes")
    fits.add_argument("--size", nargs="+", default=["416*720", "512*512"], help="WIDTH*HEIGHT video sizes")
    fits.add_argument("--no-fp8-gemm", action="store_true", help="a card without fp8 tensor cores (before Ada)")
    soak = commands.add_parser("soak", help="nothing leaks: many short sessions through the app, one long live session")
    soak.add_argument("--sessions", type=int, default=100, help="visitors, one after another (0: skip)")
    soak.add_argument("--seconds", type=float, default=1.0, help="speech per visitor")
    soak.add_argument("--live-minutes", type=float, default=0.0, help="also one live session this long (video minutes)")
    soak.add_argument("--json", help="write the report here")
    soak.add_argument("--plot", help="PNG of RSS, heap and temp files over the visitors and the live session")
    world = commands.add_parser("world", help="the synthetic world: contact sheet, autoencoder benchmark")
    world.add_argument("what", choices=["sheet", "autoencoder-bench"])
    world.add_argument("--out", help="PNG of the contact sheet (default docs/synthetic-world.png)")
    world.add_argument("--seconds", type=float, default=10.0, help="video decoded per benchmark run")
    compare = commands.add_parser("audio-compare", help="our speech preprocessing against the reference's "
                                  "(ffmpeg atempo vs sox tempo; channel 0 vs a downmix), in features (docs/AUDIO.md)")
    compare.add_argument("speech", nargs="+", help="speech recordings (the first also makes the stereo case)")
    compare.add_argument("--fps", type=float, default=20.0, help="video frames per second (tempo 25/fps)")
    compare.add_argument("--no-wav2vec2", action="store_true", help="log-mel features only")
    differences = commands.add_parser("reference-differences", help="the reference's overlap VAE decode and 2-GPU "
                                      "memory fold against ours, measured (docs/RELEASE.md; needs ../shared/fixtures)")
    differences.add_argument("--size", type=int, default=64, help="video side of the VAE measurement")
    differences.add_argument("--chunks", type=int, default=4, help="chunks of the VAE measurement")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    _quiet_libraries()
    return {"generate": generate, "train": train_command, "eval": eval_command, "bench": bench_command,
            "soak": soak_command, "fit": fit_command, "world": world_command, "audio-compare": audio_compare_command,
            "reference-differences": reference_differences_command}[args.command](args)


def train_command(args) -> int:
    from . import train
    from .autoencoder import WEIGHTS as AUTOENCODER_WEIGHTS
    from .metrics import WEIGHTS as READER_WEIGHTS

    from .tiny import WEIGHTS as TINY_WEIGHTS

    run = {"autoencoder": (train.train_autoencoder, AUTOENCODER_WEIGHTS), "reader": (train.train_reader, READER_WEIGHTS),
           "denoiser": (train.train_denoiser, TINY_WEIGHTS)}
    function, default_out = run[args.what]
    options = {"seed": args.seed} | ({"steps": args.steps} if args.steps else {})
    if args.what == "denoiser":
        options |= {"objective": args.objective, "compression": args.memory, "device": args.device}
        init = TINY_WEIGHTS if args.init == "tiny" else args.init
        options |= ({"init": init} if init else {}) | ({"lr": args.lr} if args.lr else {})
        shipped = (args.objective, args.memory) == ("neighbor", "conv")
        default_out = TINY_WEIGHTS if shipped else Path("runs") / f"{args.objective}-{args.memory}"
    print(json.dumps(function(args.out or default_out, **options), indent=2))
    return 0


def eval_command(args) -> int:
    from .evaluate import TABLE_HEADER, contact_sheet, evaluate_model, plot_drift, precision_cost, precision_table, table_row
    from .hub import LiveActError

    if args.precision:
        report = precision_cost(args.model, args.minutes, args.identities)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(precision_table(report))
        return 0
    try:
        summary, rollouts = evaluate_model(args.model, args.minutes, args.identities, Path(args.real_speech))
    except LiveActError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, write in ((args.json, lambda p: Path(p).write_text(json.dumps(summary, indent=2) + "\n")),
                        (args.plot, lambda p: plot_drift(rollouts, p, f"{summary['model']}: identity drift")),
                        (args.sheet, lambda p: contact_sheet(rollouts, p))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write(path)
    print(TABLE_HEADER)
    print(table_row(summary, args.label))
    return 0


def bench_command(args) -> int:
    from . import bench, gpu_bench
    from .hub import LiveActError

    if args.gpu and (args.plot or args.long_minutes or args.flops or args.model != "tiny"):
        print("error: --gpu measures the 18B config with random weights alone; run --model, --plot, --long-minutes "
              "and --flops without it.", file=sys.stderr)
        return 2
    if (args.suite or args.low_vram) and not args.gpu:
        print(f"error: {'--suite' if args.suite else '--low-vram'} is a --gpu benchmark: add --gpu.", file=sys.stderr)
        return 2
    if args.suite and args.low_vram:
        print("error: --suite and --low-vram are two runs: run them one after the other.", file=sys.stderr)
        return 2
    before = Path(args.markdown).read_text() if args.markdown and Path(args.markdown).exists() else ""
    if args.low_vram:  # docs/GPU.md holds both --gpu runs: each rewrites its part and keeps the other's
        table, page = gpu_bench.low_vram_markdown, lambda report: gpu_bench.low_vram_page(report, before)
    elif args.gpu:
        table, page = gpu_bench.gpu_markdown, lambda report: gpu_bench.gpu_page(report, before)
    else:
        table = page = bench.markdown

    def write(report: dict) -> None:  # after every GPU variant too: a run stopped early leaves what it measured
        (report["_run"] if args.low_vram else report)["command"] = "python -m liveact " + " ".join(args.argv)
        if args.plot and args.markdown:  # the document shows the plot, by a path relative to itself
            report["plot"] = os.path.relpath(args.plot, Path(args.markdown).parent)
        for path, text in ((args.json, lambda: json.dumps(report, indent=2) + "\n"), (args.markdown, lambda: page(report))):
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_text(text())

    try:
        if args.gpu:
            from .hub import parse_size  # not .pipeline: it needs PyAV, which a bare GPU machine may lack

            device = args.device or "cuda"
            if args.low_vram:
                sizes = [parse_size(args.size)] if args.size else gpu_bench.LOW_VRAM_SIZES
                report = gpu_bench.gpu_low_vram(args.low_vram, sizes, args.chunks or 10, device, budget_s=args.budget_s,
                                                save=write)
            else:
                measure = gpu_bench.gpu_suite if args.suite else gpu_bench.gpu_speed
                report = measure(parse_size(args.size or "512*512"), args.chunks or 6, device, budget_s=args.budget_s,
                                 save=write)
        else:
            report = bench.run(args.model, args.seconds, args.runs, args.long_minutes, args.long_budget, args.flops,
                               args.device, args.size)
    except LiveActError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write(report)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        bench.plot(report, args.plot)
    print(table(report))
    return 0


def fit_command(args) -> int:
    from .hub import config_18b, parse_size
    from .vram import fit_table

    print(fit_table(config_18b(), [parse_size(size) for size in args.size], args.gib, not args.no_fp8_gemm))
    return 0


def soak_command(args) -> int:
    from . import soak

    report = {"command": "python -m liveact " + " ".join(args.argv)}
    if args.sessions:
        report["many_sessions"] = soak.many_sessions(args.sessions, args.seconds)
    if args.live_minutes:
        report["live_session"] = soak.live_session(args.live_minutes)
    summary = {part: {key: value for key, value in numbers.items() if not isinstance(value, list)}
               for part, numbers in report.items() if isinstance(numbers, dict)}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        soak.plot(report, args.plot)
    return 0


def world_command(args) -> int:
    if args.what == "sheet":
        from .synthetic import contact_sheet

        print(contact_sheet(args.out or "docs/synthetic-world.png"))
    else:
        from .autoencoder import benchmark

        print(benchmark(seconds=args.seconds))
    return 0


def audio_compare_command(args) -> int:
    from .audio_compare import markdown, run
    from .hub import LiveActError
    from .inputs import LiveActInputError

    try:
        rows = run(args.speech, args.fps, wav2vec2=not args.no_wav2vec2)
    except (LiveActError, LiveActInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("python -m liveact " + " ".join(args.argv))
    print(markdown(rows))
    return 0


def reference_differences_command(args) -> int:
    from .reference_differences import main

    print("python -m liveact " + " ".join(args.argv))
    return main(args.size, args.chunks)


def _quiet_libraries() -> None:
    """Our progress bar and errors only: no per-part loading bars or install advice from the libraries."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
