"""Seeds and random draws that come out bit-identical on every machine.

Every peer builds the initial model from the swarm's seed and the genesis record carries
its checksum, so a draw that differs in the last bit between two CPUs (AVX2 vs AVX-512,
x86 vs ARM) would lock one of them out of the swarm. Torch's own ``normal_`` takes a
vectorized path with its own log/cos on some CPUs and a scalar one elsewhere, so it is
not used for anything that must agree across machines. Instead we draw integers (pure
integer arithmetic in the generator) and turn them into floats with exact or singly
rounded IEEE operations, which every conforming machine computes the same way.

Seeds are derived by hashing labelled parts, so two uses of one swarm seed (teacher
weights vs. training stream vs. held-out data) can never collide by accident.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

# 24-bit integer draws: converting to float64 and summing four of them stays exact.
_BITS = 24
_HALF = 1 << (_BITS - 1)
# Sum of four centered uniforms (Irwin-Hall, n=4) is close enough to a normal for
# weight init; its std is 2^24 * sqrt(4/12) = 2^24 / sqrt(3) in integer units.
_TERMS = 4
_SUM_STD = float(1 << _BITS) * math.sqrt(_TERMS / 12.0)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from labelled parts; the same parts give the same seed everywhere."""
    h = hashlib.blake2b(digest_size=8, person=b"swarmtrain-seed")
    for part in parts:
        # Type tag + length prefix so ("ab", "c") and ("a", "bc") or 1 and "1" differ.
        raw = str(part).encode() if isinstance(part, str) else part.to_bytes(16, "little", signed=True)
        h.update(b"s" if isinstance(part, str) else b"i")
        h.update(len(raw).to_bytes(4, "little"))
        h.update(raw)
    return int.from_bytes(h.digest(), "little") >> 1


def make_generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from :func:`derive_seed` (never the global RNG)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(*parts))
    return gen


def portable_normal(shape: tuple[int, ...] | torch.Size, std: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Approximately N(0, std^2) float32 values, identical bits on every machine.

    Each value is the sum of four odd integers uniform in (-2^24, 2^24), exact in float64,
    times one float64 constant (one correctly rounded multiply), then rounded to float32.
    """
    shape = tuple(shape)
    draws = torch.randint(0, 1 << _BITS, (_TERMS, *shape), generator=generator, dtype=torch.int64)
    # 2k + 1 - 2^24 maps [0, 2^24) onto odd integers symmetric around zero: mean exactly 0.
    centered = draws * 2 + (1 - 2 * _HALF)
    total = centered.sum(dim=0).to(torch.float64)
    # 2 * _SUM_STD: the odd-integer spacing doubles the spread of the raw draws.
    return (total * (std / (2.0 * _SUM_STD))).to(torch.float32)


def without_global_rng(build: Callable[[], T]) -> T:
    """Run ``build`` (a module constructor) and restore the global CPU RNG afterwards.

    Torch's default initialisers draw from the global RNG; the caller overwrites those
    values from its own generator, and restoring the state keeps a peer's other random
    streams independent of how many models it built. (Building on the ``meta`` device
    would avoid the draws, but its first use costs over a second of lazy imports.)
    """
    with torch.random.fork_rng(devices=[]):
        return build()
