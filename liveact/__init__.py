"""liveact: real-time audio-driven talking-head video by autoregressive diffusion (after SoulX-LiveAct)."""
