"""Misbehaviour on purpose (``--fault MODE``), so anyone can watch the swarm reject it.

Tensor faults change what is encoded; payload and commitment faults change what is
published about it. Each mode names the check that should catch it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import Tensor

from swarmtrain.protocol.work import IdentityWork

# mode -> the check expected to reject it (shown in docs and the CLI help)
FAULT_MODES: dict[str, str] = {
    "noise": "loss vote (random direction of honest size raises the held-out loss)",
    "scale": "norm check (10x the honest size)",
    "sign-flip": "loss vote (the update points uphill)",
    "nan": "decoder / finite check (NaN values)",
    "bad-checksum": "digest check (served bytes do not match the commitment)",
    "stale-base": "base-version check (built on an older version)",
    "replay": "replay check (resends an update already seen)",
    "free-rider": "norm check (claims samples, trains nothing, sends almost nothing)",
    "overflow": "norm check; clipped at merge if voted in (finite values near 1e30 that overflow a mean)",
    "inflate": "sample-claim check; capped at merge (claims 10^12 samples for a round's work)",
    "metadata": "settings check (grinds its digest, and so its checkers, through payload metadata)",
    "late-commit": "commit-set freeze (commits after the commit deadline; ignored by the others)",
    "collude": "checks by peers with standing (sends sign-flipped updates; as a checker accepts its "
               "fellow colluders' and rejects everyone else's)",
    "copycat": "near-copy check (resends an update merged last round, another peer's, with 1 % noise: "
               "a new digest, no training)",
    "free-identity": "identity price (commits without the proof of work that a swarm started with "
                     "--identity-bits N asks for; in a swarm without one it is an honest peer)",
}

SCALE_FACTOR = 10.0
# Colluders recognise each other's commitments by this train loss (any covert channel
# would do; this one needs no coordination outside the swarm's own records).
COLLUDER_MARK = 0.4242421
OVERFLOW_FACTOR = 1e30
INFLATED_SAMPLES = 10**12


class FaultError(ValueError):
    """Unknown fault mode; the message lists the valid ones."""


def validate_fault(mode: str | None) -> str | None:
    if mode is None or mode in FAULT_MODES:
        return mode
    raise FaultError(f"unknown fault mode {mode!r}; choose one of: {', '.join(FAULT_MODES)}")


def trains(mode: str | None) -> bool:
    """Whether a peer in this mode spends compute on inner steps."""
    return mode != "free-rider"


def corrupt(mode: str | None, update: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """The tensors a faulty peer encodes instead of its honest ``update``."""
    out = {name: t.clone() for name, t in update.items()}
    if mode == "scale":
        return {name: t * SCALE_FACTOR for name, t in out.items()}
    if mode in ("sign-flip", "collude"):
        return {name: -t for name, t in out.items()}
    if mode == "noise":
        noisy: dict[str, Tensor] = {}
        for name, t in out.items():
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
            scale = t.norm() / noise.norm().clamp_min(1e-12)
            noisy[name] = noise * scale
        return noisy
    if mode == "nan":
        for t in out.values():
            if t.numel():
                t.view(-1)[:: max(1, t.numel() // 7)] = float("nan")
        return out
    if mode == "free-rider":
        return {name: torch.randn(t.shape, generator=generator) * 1e-7 for name, t in out.items()}
    if mode == "overflow":
        return {name: t * OVERFLOW_FACTOR for name, t in out.items()}
    return out


TENSOR_FAULTS = frozenset({"noise", "scale", "sign-flip", "nan", "free-rider", "overflow", "metadata", "collude"})


def claimed_samples(mode: str | None, samples: int) -> int:
    """The sample count a peer in this mode claims for ``samples`` of real work."""
    return INFLATED_SAMPLES if mode == "inflate" else samples


def metadata(mode: str | None, generator: torch.Generator) -> dict[str, int] | None:
    """Payload metadata: none for honest peers; a random nonce for ``metadata``, which is
    how an author would grind digests (and so its checkers) for free."""
    if mode != "metadata":
        return None
    return {"nonce": int(torch.randint(0, 2**31, (1,), generator=generator))}


def colludes(mode: str | None) -> bool:
    """Whether the peer votes for its fellow colluders and against everyone else."""
    return mode == "collude"


def reported_train_loss(mode: str | None, train_loss: float) -> float:
    """The train loss a peer in this mode publishes (colluders: their mark)."""
    return COLLUDER_MARK if colludes(mode) else train_loss


def is_colluder_commitment(train_loss: float) -> bool:
    return train_loss == COLLUDER_MARK


COPY_NOISE = 0.01  # a copycat's noise, relative to each tensor's norm


def copies(mode: str | None) -> bool:
    """Whether the peer sends a perturbed copy of an update merged last round."""
    return mode == "copycat"


def pick_copy(merged: Mapping[bytes, bytes], own: bytes | None) -> bytes | None:
    """The payload a copycat resends: the first merged last round that is not its own."""
    return next((merged[d] for d in sorted(merged) if d != own), None)


def perturbed_copy(source: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """``source`` with noise of :data:`COPY_NOISE` of each tensor's norm: a new digest."""
    out = {}
    for name, t in source.items():
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
        out[name] = t.to(torch.float32) + noise * (COPY_NOISE * t.norm() / noise.norm().clamp_min(1e-12))
    return out


def skips_work(mode: str | None) -> bool:
    """Whether the peer commits without the proof of work on its identity."""
    return mode == "free-identity"


def unpaid_nonce(work: IdentityWork, peer_id: str) -> int:
    """What a ``free-identity`` peer sends instead of a proof: the first nonce that is not
    one (0 itself passes about once in 2^bits)."""
    return next(n for n in itertools.count() if not work.accepts(peer_id, n))


def commits_late(mode: str | None) -> bool:
    """Whether the peer publishes its commitment after the commit deadline."""
    return mode == "late-commit"


def corrupts_tensors(mode: str | None) -> bool:
    """Whether this mode changes the encoded tensors (the others lie about the payload)."""
    return mode in TENSOR_FAULTS


def allows_nonfinite(mode: str | None) -> bool:
    """The NaN fault must bypass the encoder's finite check to build its hostile payload."""
    return mode == "nan"


def corrupt_digest(mode: str | None, digest: bytes) -> bytes:
    """The digest a ``bad-checksum`` peer commits to (one bit off the real one)."""
    if mode != "bad-checksum":
        return digest
    return bytes([digest[0] ^ 0x01]) + digest[1:]
