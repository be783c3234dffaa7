"""Near-copies: updates that are (almost) another update, found by a checker.

A byte-for-byte copy under another author is refused at admission (one digest once);
this is for copies with a few values changed, which have a digest of their own. Within a
round they can only come from one source (the author serves its update only from the
commit deadline on, when the round's commitments are frozen): one attacker's identities
sending one piece of work twice, to double its weight. Across rounds, anyone can resend
an update that was merged last round, perturbed: a stale step counted twice, and
standing earned without training.

The measure is the cosine between the flattened updates (float64). Honest updates of
the demo model (`benchmarks/similarity.py`) reach 0.87 against each other in a round and
0.68 against last round's, dense; 0.50 and 0.28 compressed to 1.5 %.
:data:`NEAR_COPY_COSINE` leaves room above those; a copier must add noise of about a
third of the update's norm to slip under it, and then sends a third noise.

This is a checker's judgement, not part of the decision: floats of different machines
may differ in the last bits, and a vote may; the decision only counts votes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from swarmtrain.peer.config import CodecConfig
from swarmtrain.peer.round.validity import open_update
from swarmtrain.peer.training import faults

NEAR_COPY_COSINE = 0.95

__all__ = ["NEAR_COPY_COSINE", "copycat_source", "cosine", "flat", "near_copies"]

Update = Mapping[str, Tensor]


def flat(update: Update) -> Tensor:
    """All of an update's values in one float64 vector, tensors in name order."""
    return torch.cat([update[name].detach().flatten().to(torch.float64) for name in sorted(update)])


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two flattened updates; 0 when either is all zeros or the shapes differ."""
    if a.shape != b.shape:
        return 0.0
    denominator = float(a.norm()) * float(b.norm())
    if not denominator or not math.isfinite(denominator):
        return 0.0
    return float(a @ b) / denominator


def copycat_source(merged: Mapping[bytes, bytes], own: bytes | None, params: Mapping[str, Tensor],
                   codec: CodecConfig) -> dict[str, Tensor] | None:
    """What a ``--fault copycat`` peer resends this round: another's update merged last
    round, decoded (None when there is none, as in a swarm's first round)."""
    payload = faults.pick_copy(merged, own)
    return None if payload is None else open_update(payload, params=params, codec=codec)


def near_copies(updates: Mapping[bytes, Update], earlier: Mapping[bytes, Update], *,
                threshold: float = NEAR_COPY_COSINE) -> dict[bytes, str]:
    """Digest -> why, for each of ``updates`` (this round's, as this checker decoded them)
    within ``threshold`` of an ``earlier`` update (merged last round) or of another of
    ``updates`` (then both: nobody can tell which came first)."""
    vectors = {d: flat(u) for d, u in updates.items()}
    before = {d: flat(u) for d, u in earlier.items()}
    found: dict[bytes, str] = {}
    for digest in sorted(vectors):
        for other, vector in before.items():
            if other != digest and (c := cosine(vectors[digest], vector)) >= threshold:
                found[digest] = f"near-copy of update {other.hex()[:12]} merged last round (cosine {c:.3f})"
                break
    ordered = sorted(vectors)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if (c := cosine(vectors[a], vectors[b])) >= threshold:
                found.setdefault(a, f"near-copy of update {b.hex()[:12]} of this round (cosine {c:.3f})")
                found.setdefault(b, f"near-copy of update {a.hex()[:12]} of this round (cosine {c:.3f})")
    return found
