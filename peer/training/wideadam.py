"""AdamW whose second moment estimates that of the whole swarm's batch (``--inner-optim wide-adamw``).

Why: a peer's AdamW divides each step by the second moment of its own batch's gradient,
which holds that batch's noise. Data-parallel training over K peers' batches divides by
a second moment with K times less noise, so in coordinates where noise dominates its
steps are up to sqrt(K) larger, and the mean of K peers' AdamW trajectories falls short
of it (measured in docs/decisions.md, "Round math"). This optimizer removes the share
of the noise that K peers' mean would average away:

    v_eff = max(v - (1 - 1/K) * s, v / K)

where v is AdamW's second moment and s an average of the batch gradient's noise,
sampled each step from two half-batch gradients g_a, g_b of the same batch:
(g_a - g_b)^2 / 4 has the expectation of the full batch gradient's variance, and the
two halves see the same parameters (consecutive steps' gradients differ also by the
step between them, which made an earlier estimate run high). With K=1 it is AdamW.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

# Per-parameter state: AdamW's, plus the noise average and how many samples it holds.
# Scalars are 0-d float tensors as torch's AdamW keeps its step, so the saved-state
# code treats both alike.
STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "noise", "noise_steps")
SCALAR_KEYS = frozenset({"step", "noise_steps"})


class WideAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments) with v_eff as above.

    ``noise`` must be set before each :meth:`step` to that step's noise sample per
    parameter (see :func:`half_batch_noise`); the step consumes it, so a step without a
    fresh sample leaves the noise average as it was rather than counting an old sample
    twice. ``swarm_size`` is K, set as the swarm grows or shrinks (:meth:`set_swarm_size`).
    """

    def __init__(self, params: Iterable[dict[str, object]], *, lr: float, betas: tuple[float, float],
                 weight_decay: float, eps: float = 1e-8, swarm_size: int = 1) -> None:
        super().__init__(list(params), dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps))
        self.swarm_size = 1
        self.set_swarm_size(swarm_size)
        self.noise: Mapping[torch.Tensor, torch.Tensor] = {}

    def set_swarm_size(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"swarm size must be >= 1, got {k}")
        self.swarm_size = k

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("WideAdamW takes no closure: set .noise and the gradients, then step()")
        k = self.swarm_size
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                 exp_avg_sq=torch.zeros_like(p), noise=torch.zeros_like(p),
                                 noise_steps=torch.tensor(0.0))
                g = p.grad
                state["step"] += 1
                t = float(state["step"])
                state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                v = state["exp_avg_sq"] / (1 - b2 ** t)
                sample = self.noise.get(p)
                if sample is not None:
                    state["noise"].mul_(b2).add_(sample, alpha=1 - b2)
                    state["noise_steps"] += 1
                seen = float(state["noise_steps"])
                if k > 1 and seen:
                    s = state["noise"] / (1 - b2 ** seen)
                    v = torch.maximum(v - (1 - 1 / k) * s, v / k)
                p.mul_(1 - lr * group["weight_decay"])
                p.addcdiv_(state["exp_avg"] / (1 - b1 ** t), v.sqrt().add_(eps), value=-lr)
        self.noise = {}


def half_batch_noise(halves: tuple[list[torch.Tensor], list[torch.Tensor]], params: list[torch.Tensor],
                     scale: float) -> dict[torch.Tensor, torch.Tensor]:
    """Each parameter's noise sample from its two half-batch gradients, as clipped
    (``scale``: the clipping factor applied to their mean)."""
    return {p: ((ga - gb) * scale).square_().div_(4) for p, ga, gb in zip(params, *halves)}
