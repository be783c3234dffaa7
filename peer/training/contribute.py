"""One peer's contribution to a round: pseudo-gradient of a snapshot, error feedback, encode.

Shared by the one-process simulator and the networked peer, so both run the same math.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from swarmtrain.peer.training import faults
from swarmtrain.peer.config import SwarmConfig, max_samples
from swarmtrain.peer.training.feedback import ErrorFeedback
from swarmtrain.peer.training.progress import Snapshot
from swarmtrain.peer.training.norms import update_norm
from swarmtrain.protocol import encode_update_and_reconstruct, update_digest


@dataclass(frozen=True)
class LocalUpdate:
    """What a peer publishes for one round (the commitment) and serves (the payload)."""

    payload: bytes
    digest: bytes            # BLAKE2b-256 of ``payload``
    committed_digest: bytes  # what the commitment claims (differs only for bad-checksum)
    base_version: bytes
    samples: int
    train_loss: float
    steps: int
    train_seconds: float
    sent_norm: float = 0.0  # norm of the decoded payload (a checker's own reference norm)


def pseudo_gradient(start: Mapping[str, Tensor], trained: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DiLoCo's outer gradient: ``V(r) - local params`` (so the outer step subtracts it)."""
    return {name: start[name].to(torch.float32) - trained[name].to(torch.float32) for name in start}


class Contributor:
    """What a peer sends from its snapshots: error feedback, encoding, and its fault mode.

    Training itself is the :class:`~swarmtrain.peer.training.progress.ProgressTracker`'s;
    this turns each snapshot into the round's update.
    """

    def __init__(self, config: SwarmConfig, *, stream_seed: int, fault: str | None = None) -> None:
        self.config = config
        self.fault = faults.validate_fault(fault)
        decay = config.outer.ef_decay if config.codec.compressed else 0.0
        self.feedback = ErrorFeedback(decay)
        self._generator = torch.Generator().manual_seed(0x5EED + stream_seed)
        self._previous: LocalUpdate | None = None
        self._previous_base: tuple[dict[str, Tensor], bytes] | None = None
        # ``copycat`` only: the decoded update it resends this round (set by the driver
        # from what was merged last round; None in a swarm's first round).
        self.copy_source: Mapping[str, Tensor] | None = None

    @property
    def last_digest(self) -> bytes | None:
        """The digest of the update this peer sent last, if any."""
        return None if self._previous is None else self._previous.digest

    def contribute(self, snap: Snapshot, version: bytes) -> LocalUpdate:
        """This round's update from ``snap``, for the round of version ``version``.

        Honest peers snapshot a trajectory based on ``version`` itself; a snapshot based
        on another version is sent as it is, and checkers reject it as stale.
        """
        mode = self.fault
        if mode == "replay" and self._previous is not None:
            replayed = self._previous  # resend an earlier round's bytes under this round's base
            return dataclasses.replace(replayed, committed_digest=replayed.digest, base_version=version,
                                       steps=0, train_seconds=0.0)
        base_params, base_version = snap.base, snap.base_version
        if mode == "stale-base" and self._previous_base is not None:
            base_params, base_version = self._previous_base  # claims the version before
        self._previous_base = (snap.base, snap.base_version)

        if faults.trains(mode):
            delta = pseudo_gradient(base_params, snap.params)
            samples = min(snap.samples, max_samples(self.config))
        else:
            # A free rider claims a full round of samples without computing anything.
            delta = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in base_params.items()}
            samples = max_samples(self.config)
        to_send = self.feedback.accumulate(delta)
        codec = self.config.codec
        payload, sent = encode_update_and_reconstruct(to_send, density=codec.density, bits=codec.bits,
                                                      chunk=codec.chunk)
        # Only what really left an honest peer leaves the buffer; a faulty peer keeps the
        # same honest arithmetic and corrupts just what it sends, so "scale" really is 10x
        # of an update that looks like everyone else's.
        self.feedback.settle(sent)
        honest_norm = update_norm(sent)
        if faults.copies(mode) and self.copy_source is not None:
            payload, sent = encode_update_and_reconstruct(faults.perturbed_copy(self.copy_source, self._generator),
                                                          density=codec.density, bits=codec.bits, chunk=codec.chunk)
        elif faults.corrupts_tensors(mode):
            bad = faults.corrupt(mode, to_send, self._generator)
            payload, sent = encode_update_and_reconstruct(bad, density=codec.density, bits=codec.bits,
                                                          chunk=codec.chunk, metadata=faults.metadata(mode, self._generator),
                                                          check_finite=not faults.allows_nonfinite(mode))
        digest = update_digest(payload)
        update = LocalUpdate(
            payload=payload,
            digest=digest,
            committed_digest=faults.corrupt_digest(mode, digest),
            base_version=base_version,
            samples=max(1, faults.claimed_samples(mode, samples)),
            train_loss=faults.reported_train_loss(mode, snap.train_loss),
            steps=snap.steps,
            train_seconds=snap.train_seconds,
            sent_norm=honest_norm,
        )
        self._previous = update
        return update
