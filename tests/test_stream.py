from __future__ import annotations

import pytest
import torch

from conftest import make_conditioning, make_tiny_model
from conftest import stream_latents as run
from liveact.sampler import FlowSampler
from liveact.stream import PromptEdit, StreamConfig, StreamingSession, audio_window


def test_seeded_generator_makes_the_stream_reproducible():
    model = make_tiny_model()
    first, again, other = run(model, 7), run(model, 7), run(model, 8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.allclose(first[-1], other[-1])


def test_sampler_schedule_and_update():
    sampler = FlowSampler()
    assert sampler.timesteps == pytest.approx((1000.0, 937.5, 833.3333333, 0.0))
    clean, noise = torch.randn(3), torch.randn(3)
    at = lambda t: (1 - t / 1000) * clean + t / 1000 * noise  # noqa: E731  x_t; its velocity is noise - clean
    for step, (t, t_next) in enumerate(zip(sampler.timesteps, sampler.timesteps[1:])):
        last = step == sampler.num_steps - 1
        assert torch.allclose(sampler.step(at(t), noise - clean, step, None if last else noise), at(t_next), atol=1e-6)
    with pytest.raises(ValueError, match="pass noise"):
        sampler.step(at(1000), noise - clean, 0)


def test_chunk_geometry_and_audio_windows():
    model = make_tiny_model()
    y, image, text, _ = make_conditioning(model)
    session = StreamingSession(model, y, image, text)
    assert session.window_video_frames == 53
    assert [session.chunk_video_frames(k) for k in range(3)] == [range(0, 21), range(21, 53), range(53, 85)]
    assert [session.audio_window_start(k) for k in range(4)] == [0, 0, 32, 64]
    assert session.chunks_for(21) == 1 and session.chunks_for(22) == 2 and session.chunks_for(85) == 3


def test_audio_window_clamps_neighbours():
    features = torch.arange(10, dtype=torch.float32).view(1, 10, 1, 1)
    window = audio_window(features, start=0, frames=4, context=5)[0, :, :, 0, 0]
    assert window.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5]]
    tail = audio_window(features, start=8, frames=3, context=5)[0, :, :, 0, 0]
    assert tail.tolist()[-1] == [8, 9, 9, 9, 9]


def test_stats_per_chunk():
    model = make_tiny_model()
    y, image, text, audio = make_conditioning(model)
    session = StreamingSession(model, y, image, text, generator=torch.Generator().manual_seed(0))
    chunks = list(session.stream(audio, num_chunks=3))
    assert [c.index for c in chunks] == [0, 1, 2]
    assert [c.latents.shape[2] for c in chunks] == [6, 8, 8]
    assert all(c.seconds > 0 and c.memory_bytes == session.memory_bytes for c in chunks)


def test_audio_guidance_runs_a_null_pass_with_its_own_memories():
    model = make_tiny_model()
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(args[4] is not None))
    plain = run(model, 3, chunks=2)
    assert calls == [False, True, True] * 2
    calls.clear()
    guided = run(model, 3, chunks=2, config=StreamConfig(audio_guidance=2.0))
    # step 0 has no audio so no guidance; steps 1 and 2 add a null-audio call
    assert calls == [False, True, True, True, True] * 2
    assert not torch.allclose(plain[-1], guided[-1])
    y, image, text, _ = make_conditioning(model)
    session = StreamingSession(model, y, image, text, config=StreamConfig(audio_guidance=2.0))
    assert sorted(session.null_memories) == [1, 2]
    assert session.memory_bytes == 5 / 3 * StreamingSession(model, y, image, text).memory_bytes


def test_prompt_edits_apply_to_their_chunk_range():
    model = make_tiny_model()
    other_text = torch.randn(1, 4, model.config.text_dim, generator=torch.Generator().manual_seed(9))
    base = run(model, 5, chunks=4)
    edited = run(model, 5, chunks=4, edits=[PromptEdit(2, 3, other_text)])
    assert all(torch.equal(a, b) for a, b in zip(base[:2], edited[:2])), "chunks before the edit are unchanged"
    assert not torch.allclose(base[2], edited[2]), "the edited chunk follows the new prompt"


def test_overlapping_prompt_edits_the_first_wins():
    """As the reference: for each chunk the first edit whose range holds it, in the order given."""
    model = make_tiny_model()
    g = torch.Generator().manual_seed(9)
    smile, frown = (torch.randn(1, 4, model.config.text_dim, generator=g) for _ in range(2))
    first_only = run(model, 5, chunks=4, edits=[PromptEdit(1, 4, smile)])
    overlapping = run(model, 5, chunks=4, edits=[PromptEdit(1, 4, smile), PromptEdit(2, 3, frown)])
    assert all(torch.equal(a, b) for a, b in zip(first_only, overlapping)), "the later, overlapping edit is unused"
    inner_first = run(model, 5, chunks=4, edits=[PromptEdit(2, 3, frown), PromptEdit(1, 4, smile)])
    assert torch.equal(first_only[1], inner_first[1]) and not torch.allclose(first_only[2], inner_first[2])


def test_wrong_y_is_a_clear_error():
    model = make_tiny_model()
    y, image, text, _ = make_conditioning(model, window=6)
    with pytest.raises(ValueError, match="the whole window"):
        StreamingSession(model, y, image, text)


@pytest.mark.parametrize("dtype, options, tolerance", [
    (torch.float32, dict(offload_memory=True), 0.0),
    (torch.float32, dict(fp8_memory=True), 0.005),
    (torch.bfloat16, dict(), 0.02),
    (torch.bfloat16, dict(fp8_memory=True, offload_memory=True), 0.02),
])
def test_precision_and_storage_variants_follow_the_fp32_stream(dtype, options, tolerance):
    reference = run(make_tiny_model(), 0)
    variant = run(make_tiny_model().to(dtype=dtype), 0, config=StreamConfig(**options))
    for ours, exact in zip(variant, reference):
        assert ours.dtype == dtype
        assert (ours.float() - exact).abs().max() <= tolerance * exact.abs().max()


def test_a_dropped_session_frees_its_memories_at_once():
    """No reference cycle holds a session: on a GPU its key/value memories are tens of GB, and the next session
    must not wait for the garbage collector to get them back."""
    import gc
    import weakref

    model = make_tiny_model()
    y, image, text, audio = make_conditioning(model)
    session = StreamingSession(model, y, image, text, config=StreamConfig(audio_guidance=2.0))
    list(session.stream(audio, num_chunks=3))
    memories = [weakref.ref(memory) for memory in session._distinct_memories]
    gc.disable()
    try:
        del session
        assert all(memory() is None for memory in memories)
    finally:
        gc.enable()
