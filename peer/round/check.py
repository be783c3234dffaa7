"""A checker's side of a round: from downloaded payloads to one verdict per update.

Cheap checks first (digest, base version, replay, sample claim, decoding), then the norm
and loss checks of :mod:`swarmtrain.peer.round.vote`. Shared by the simulator and the
networked peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor

from swarmtrain.peer.config import SwarmConfig, max_samples
from swarmtrain.peer.training.tasks import Task
from swarmtrain.peer.training.trainer import evaluate_loss
from swarmtrain.peer.round.vote import Verdict, judge, median_norm, reject
from swarmtrain.peer.training.norms import update_norm
from swarmtrain.protocol import ProtocolError, decode_update, update_digest


@dataclass(frozen=True)
class Submission:
    """An update as a checker sees it: the signed commitment plus the bytes it fetched."""

    author: str
    committed_digest: bytes
    base_version: bytes
    samples: int
    payload: bytes | None  # None when it could not be downloaded
    missing_reason: str = "payload not downloaded"  # why ``payload`` is None


class Checker:
    """Holds a scratch model and this peer's own held-out batches for voting."""

    def __init__(self, task: Task, config: SwarmConfig, *, heldout_seed: int) -> None:
        self.task = task
        self.config = config
        self.model = task.build_model()
        self.batches = task.heldout_batches(config.vote.heldout_batches, heldout_seed)

    def loss(self, params: Mapping[str, Tensor]) -> float:
        return evaluate_loss(self.task, self.model, self.batches, params=params)

    def precheck(self, sub: Submission, *, version: bytes, seen: set[bytes],
                 max_elements: int) -> dict[str, Tensor] | Verdict:
        """Decoded tensors, or the rejecting verdict of the first cheap check that fails."""
        if sub.payload is None:
            return reject(sub.missing_reason)
        if update_digest(sub.payload) != sub.committed_digest:
            return reject("digest mismatch")
        if sub.base_version != version:
            return reject("stale base version")
        if sub.committed_digest in seen:
            return reject("replayed update")
        if not 1 <= sub.samples <= max_samples(self.config):
            return reject(f"claims {sub.samples} samples, allowed 1..{max_samples(self.config)}")
        try:
            return decode_update(sub.payload, max_elements=max_elements)
        except ProtocolError as error:
            return reject(f"malformed payload: {error}")

    def check_round(
        self,
        params: Mapping[str, Tensor],
        version: bytes,
        submissions: Iterable[Submission],
        *,
        seen: set[bytes],
        loss_before: float | None = None,
        own_norms: Iterable[float] = (),
        round_size: int = 1,
    ) -> dict[bytes, Verdict]:
        """Verdicts keyed by committed digest for the updates this peer was assigned.

        ``own_norms``: norms of this peer's own honest updates, added to the round's median
        so that in a tiny swarm (two updates to check) one outlier cannot drag it up.
        ``round_size``: how many updates the round has (each is judged at weight 1/n).
        """
        max_elements = sum(t.numel() for t in params.values())
        decoded: dict[bytes, dict[str, Tensor]] = {}
        verdicts: dict[bytes, Verdict] = {}
        for sub in submissions:
            result = self.precheck(sub, version=version, seen=seen, max_elements=max_elements)
            if isinstance(result, Verdict):
                verdicts[sub.committed_digest] = result
            else:
                decoded[sub.committed_digest] = result
        if not decoded:
            return verdicts
        before = self.loss(params) if loss_before is None else loss_before
        med = median_norm([*(update_norm(t) for t in decoded.values()), *own_norms])
        for digest in sorted(decoded):
            verdicts[digest] = judge(
                decoded[digest], params=params, loss_before=before, evaluate=self.loss,
                round_median_norm=med, config=self.config.vote,
                step_scale=self.config.outer.lr / max(1, round_size),
            )
        return verdicts
