"""The few-step flow-matching sampler of LiveAct.

Rectified flow: x_t = (1 - t/1000) * x0 + (t/1000) * noise, and the denoiser predicts the velocity
v = noise - x0. So from any x_t, x0 = x_t - (t/1000) * v, and the next (lower) noise level is
reached by mixing x0 with fresh noise. Three steps suffice for the distilled model: sigmas
1, 0.75, 0.5 after a timestep shift of 5 give t = 1000, 937.5, 833.33, then 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def shifted_timesteps(sigmas: tuple[float, ...], shift: float) -> tuple[float, ...]:
    """t = 1000 * shift*s / (1 + (shift-1)*s) for each sigma, then a final 0."""
    return tuple(1000.0 * shift * s / (1 + (shift - 1) * s) for s in sigmas) + (0.0,)


@dataclass(frozen=True)
class FlowSampler:
    sigmas: tuple[float, ...] = (1.0, 0.75, 0.5)
    shift: float = 5.0

    @property
    def timesteps(self) -> tuple[float, ...]:
        """Noise levels of each step, plus the final 0: (1000, 937.5, 833.33, 0) by default."""
        return shifted_timesteps(self.sigmas, self.shift)

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    def step(self, latents: torch.Tensor, velocity: torch.Tensor, step: int,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """From x at step `step` and its predicted velocity, the latent at step + 1: the clean
        estimate x0 after the last step, else x0 re-noised with `noise` to the next level."""
        t, t_next = self.timesteps[step] / 1000, self.timesteps[step + 1] / 1000
        clean = latents - t * velocity
        if t_next == 0:
            return clean
        if noise is None:
            raise ValueError(f"step {step} re-noises to t={t_next * 1000:g}: pass noise")
        return (1 - t_next) * clean + t_next * noise
