from __future__ import annotations

import numpy as np
import pytest
import torch

import liveact.pipeline
from conftest import example, make_tiny_model, stream_latents, video_frames
from liveact.audio import decode_audio, featurize, load_audio, save_wav
from liveact.stream import audio_window
from liveact.hub import LiveActError
from liveact.hub import parse_size
from liveact.pipeline import load


@pytest.fixture(scope="module")
def pipe(random_model_dir):
    return load(random_model_dir)


def test_live_session_yields_chunks_as_speech_arrives(pipe):
    speech = load_audio(example("speech-1.wav"))[: 16000 * 11 // 2]  # 5.5 s = 110 video frames at 20 fps
    session = pipe.start(example("portrait-1.png"), prompt="a person is talking", seed=3)
    chunks = []
    for piece in np.array_split(speech, 55):  # 0.1 s at a time, as from a microphone
        session.feed(piece, 16000)
        chunks += list(session.chunks())
    # chunk k >= 1 needs audio to frame 53 + 32(k-1) + 2 (its window and look-ahead): chunk 3 would need 119
    assert [c.index for c in chunks] == [0, 1, 2]
    session.finish()
    chunks += list(session.chunks())
    assert [c.index for c in chunks] == [0, 1, 2, 3]  # 110 frames need 1 + ceil(89 / 32) chunks
    assert [c.frames.shape for c in chunks[:2]] == [(21, 32, 32, 3), (32, 32, 32, 3)]
    assert chunks[0].frames.dtype == np.uint8 and [c.first_frame for c in chunks] == [0, 21, 53, 85]
    assert len({c.memory_bytes for c in chunks}) == 1
    assert list(session.chunks()) == []  # done


def test_generate_featurizes_channel_0_at_the_files_own_rate(pipe, tmp_path, monkeypatch):
    """The reference's order: channel 0 of the file at its own rate goes to the tempo change, then to 16 kHz."""
    import wave

    t = np.arange(44100 * 2) / 44100
    left, right = 0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 660 * t)
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as out:
        out.setnchannels(2), out.setsampwidth(2), out.setframerate(44100)
        out.writeframes((np.stack([left, right], axis=1) * 32767).astype("<i2").tobytes())
    seen = []
    monkeypatch.setattr(liveact.pipeline, "featurize", lambda *args: seen.append(args) or featurize(*args))
    pipe.generate(example("portrait-1.png"), tmp_path / "stereo.wav", tmp_path / "out.mp4", progress=False)
    _, samples, rate, fps = seen[0]
    assert rate == 44100 and fps == 20 and np.abs(samples - left).max() < 1e-4


def test_stream_audio_makes_the_same_video_from_features_of_each_window(tiny_pipeline, tmp_path):
    """--stream-audio: each chunk's window featurized from its own samples (the reference's streaming mode). The
    video has the same frames; the features differ a little, at the windows' edges and where atempo starts."""
    speech = save_wav(tmp_path / "speech.wav", load_audio(example("speech-1.wav"))[:16000 * 5])  # 100 frames
    face = example("portrait-1.png")
    whole = video_frames(tiny_pipeline.generate(face, speech, tmp_path / "whole.mp4", progress=False))
    streamed = video_frames(tiny_pipeline.generate(face, speech, tmp_path / "streamed.mp4", progress=False,
                                                   stream_audio=True))
    assert whole.shape == streamed.shape == (100, 128, 128, 3)
    samples, rate = decode_audio(speech)
    features = featurize(tiny_pipeline.featurizer, samples, rate, tiny_pipeline.fps)[None]
    live = tiny_pipeline.start(face)
    live.feed(samples, rate)
    live.finish()
    starts = sorted({live.session.audio_window_start(k) for k in range(live.session.chunks_for(100))})
    relative = lambda a, b: round(float((a - b).abs().mean() / b.abs().mean()), 3)  # noqa: E731
    differences, yardsticks = [], []
    for start in starts:  # in the chunks' order, so each window's audio is still there
        alone, cut = live.features.window(start), audio_window(features, start, 53, live.features.context)
        differences.append(relative(alone, cut))
        yardsticks.append(relative(audio_window(features, start + 1, 53, live.features.context), cut))
    pixels = np.abs(whole.astype(int) - streamed.astype(int)).mean()
    assert all(0 < d < y for d, y in zip(differences, yardsticks)), (
        f"mean |window alone - window cut from the whole| / mean |cut|: {differences}, less than the same for "
        f"the cut one frame later: {yardsticks}; mean abs difference of the videos' pixels: {pixels:.2f} of 255")


def test_sizes_of_the_reference():
    assert parse_size("512*512") == (512, 512) and parse_size("416*720") == (720, 416)
    with pytest.raises(LiveActError, match="WIDTH\\*HEIGHT"):
        parse_size("big")


def test_model_folder_sets_fps_and_size(pipe):
    assert pipe.fps == 20 and pipe.size == (32, 32)
    assert pipe.options.device == "cpu" and next(pipe.transformer.parameters()).dtype == torch.float32


@pytest.mark.parametrize("fp8_gemm", [False, True])
def test_streamed_blocks_compute_what_resident_ones_do(fp8_gemm):
    """Blocks 2.. stream from host copies (a real copy on a CPU too): each computes on its copy, the next one is
    already fetched by then, and between calls only the prefetched first streamed block is off the host."""
    resident_model, model = make_tiny_model(num_layers=5), make_tiny_model(num_layers=5)
    for m in (resident_model, model) if fp8_gemm else ():
        m.enable_fp8_gemm()  # fp8 weights are buffers: they stream too
    reference = stream_latents(resident_model, chunks=3)
    model.enable_block_offload("cpu", resident=2)
    streamed, seen = model.block_streamer.streamed, []

    def check(index):
        def hook(block, *_):
            host = streamed[index].host
            seen.append((all(t.data_ptr() != h.data_ptr() for t, h in zip(streamed[index].tensors, host)),
                         streamed[(index + 1) % len(streamed)].on_device))
        return hook

    for index, block in enumerate(model.blocks[2:]):
        block.register_forward_pre_hook(check(index))  # after the streamer's: the block has arrived
    assert len(streamed) == 3 and model.block_streamer.host_bytes > 0
    assert all(torch.equal(a, b) for a, b in zip(stream_latents(model, chunks=3), reference))
    assert seen and all(on_copy and next_fetched for on_copy, next_fetched in seen)
    assert [block.on_device for block in streamed] == [True, False, False]
    assert all(t.data_ptr() == h.data_ptr() for block in streamed[1:] for t, h in zip(block.tensors, block.host))


def test_attention_backends_belong_to_the_model():
    model, other = make_tiny_model(), make_tiny_model()
    with pytest.raises(ImportError, match="pip install flash-attn"):
        model.set_attention_backend("flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.set_attention_backend("fastest")
    reference = stream_latents(model, chunks=2)
    model.set_attention_backend("sdpa-cudnn")  # a GPU kernel: on the CPU every call falls back to plain SDPA
    assert model.attention_backend == "sdpa-cudnn" and other.attention_backend == "sdpa"
    assert all(torch.equal(a, b) for a, b in zip(stream_latents(model, chunks=2), reference))


def test_compiled_blocks_compute_the_same():
    """torch.compile per block (the --compile flag), checked on this CPU (inductor + gcc); ~1 min. More layers than
    dynamo's recompile limit: a graph per layer would leave the later ones eager, and here it fails instead."""
    layers = torch._dynamo.config.recompile_limit + 2
    reference = stream_latents(make_tiny_model(num_layers=layers), chunks=3)
    model = make_tiny_model(num_layers=layers)
    model.compile_blocks()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        compiled = stream_latents(model, chunks=3)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(compiled, reference))
    with torch._dynamo.config.patch(error_on_recompile=True):  # 3 chunks (what warm_up makes) compiled every shape
        stream_latents(model, seed=1, chunks=5)


def test_warm_up_makes_three_chunks_at_each_size_once(tiny_pipeline, monkeypatch):
    made = []
    monkeypatch.setattr(tiny_pipeline, "warmed_sizes", set())
    original = liveact.pipeline.StreamingSession.next_chunk
    monkeypatch.setattr(liveact.pipeline.StreamingSession, "next_chunk",
                        lambda session, audio: made.append(session.latent_shape) or original(session, audio))
    lines = []
    assert tiny_pipeline.sizes == (f"{tiny_pipeline.size[1]}*{tiny_pipeline.size[0]}",)  # a trained tiny model: its own
    assert tiny_pipeline.warm_up(progress=lines.append) > 0 and len(made) == 3
    assert tiny_pipeline.warmed_sizes == set(tiny_pipeline.sizes) and "warmed up" in lines[0]
    tiny_pipeline.warm_up(progress=lines.append)
    assert len(made) == 3  # warmed before: skipped


def test_overlapped_decode_streams_the_same_frames(tiny_pipeline):
    from dataclasses import replace

    from liveact.synthetic import SAMPLE_RATE, portrait, speech

    voice, options = speech(5.0, 3), tiny_pipeline.options

    def frames(overlap: bool):
        tiny_pipeline.options = replace(options, overlap_decode=overlap)
        live = tiny_pipeline.start(portrait(3, tiny_pipeline.size[0]), seed=1)
        live.feed(voice, SAMPLE_RATE)
        live.finish()
        chunks = list(live.chunks())
        assert all(chunk.timings["decode"] > 0 and chunk.timings["denoise"] > 0 for chunk in chunks)
        return [chunk.index for chunk in chunks], np.concatenate([chunk.frames for chunk in chunks])

    try:
        (order, sequential), (overlap_order, overlapped) = frames(False), frames(True)
    finally:
        tiny_pipeline.options = options
    assert order == overlap_order == list(range(len(order))) and len(order) >= 3
    assert np.array_equal(sequential, overlapped)
