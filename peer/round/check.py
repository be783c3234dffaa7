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
from swarmtrain.peer.training.contribute import LocalUpdate
from swarmtrain.peer.training.tasks import Task
from swarmtrain.peer.training.trainer import evaluate_loss
from swarmtrain.peer.round.copies import near_copies
from swarmtrain.peer.round.decision import merge_weight
from swarmtrain.peer.round.direction import against_own
from swarmtrain.peer.round.validity import InvalidUpdate, open_update
from swarmtrain.peer.round.vote import Verdict, judge, reference_norm, reject
from swarmtrain.peer.training.norms import update_norm
from swarmtrain.protocol import update_digest


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

    def precheck(self, sub: Submission, *, params: Mapping[str, Tensor], version: bytes,
                 seen: set[bytes]) -> dict[str, Tensor] | Verdict:
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
            return open_update(sub.payload, params=params, codec=self.config.codec)
        except InvalidUpdate as error:
            return reject(str(error))

    def check_round(
        self,
        params: Mapping[str, Tensor],
        version: bytes,
        submissions: Iterable[Submission],
        *,
        seen: set[bytes],
        loss_before: float | None = None,
        round_samples: int | None = None,
        merged_last_round: Mapping[bytes, bytes] | None = None,
        own: LocalUpdate | None = None,
    ) -> dict[bytes, Verdict]:
        """Verdicts keyed by committed digest for the updates this peer was assigned.

        ``round_samples``: the merge weights of all the round's commitments together
        (default: those of ``submissions``); each update is judged at its real share.
        ``merged_last_round``: payloads merged into ``version``, by digest: an update that
        is a near-copy of one of them, or of another update checked here, is rejected
        (:mod:`.copies`).
        ``own``: this checker's own update of the round. Its norm joins the round's median
        and anchors it (:func:`~swarmtrain.peer.round.vote.reference_norm`), so neither one
        outlier in a tiny swarm nor many junk updates can drag it; when it was built on
        ``version``, an update pointing against it is rejected (:mod:`.direction`).
        """
        subs = list(submissions)
        decoded: dict[bytes, dict[str, Tensor]] = {}
        verdicts: dict[bytes, Verdict] = {}
        for sub in subs:
            result = self.precheck(sub, params=params, version=version, seen=seen)
            if isinstance(result, Verdict):
                verdicts[sub.committed_digest] = result
            else:
                decoded[sub.committed_digest] = result
        if not decoded:
            return verdicts
        for digest, why in near_copies(decoded, self._open_all(merged_last_round or {}, params)).items():
            verdicts[digest] = reject(why)
            del decoded[digest]
        mine = self._open(own.payload, params) if own is not None and own.base_version == version else None
        if mine is not None:
            for digest, why in against_own(decoded, mine).items():
                verdicts[digest] = reject(why)
                del decoded[digest]
        if not decoded:
            return verdicts
        cap = max_samples(self.config)
        weight = {s.committed_digest: merge_weight(s.samples, cap) for s in subs}
        total = max(round_samples or 0, sum(weight.values()))
        before = self.loss(params) if loss_before is None else loss_before
        reference = reference_norm([update_norm(t) for t in decoded.values()], [] if own is None else [own.sent_norm])
        for digest in sorted(decoded):
            verdicts[digest] = judge(
                decoded[digest], params=params, loss_before=before, evaluate=self.loss,
                round_median_norm=reference, config=self.config.vote,
                step_scale=self.config.outer.lr * weight[digest] / total,
            )
        return verdicts

    def _open_all(self, payloads: Mapping[bytes, bytes], params: Mapping[str, Tensor]) -> dict[bytes, dict[str, Tensor]]:
        """Payloads this peer merged, opened again to compare against (one that does not
        open was refused at merge and was never part of the model)."""
        opened = {digest: self._open(payload, params) for digest, payload in payloads.items()}
        return {digest: update for digest, update in opened.items() if update is not None}

    def _open(self, payload: bytes, params: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
        try:
            return open_update(payload, params=params, codec=self.config.codec)
        except InvalidUpdate:
            return None


def colluding_verdicts(fellows: Mapping[bytes, bool]) -> dict[bytes, Verdict]:
    """The ballot of a ``--fault collude`` checker: accept its fellow colluders' updates
    (``fellows[digest]`` True) without looking, reject everyone else's."""
    return {d: Verdict(True, "ok") if fellow else reject("colluding: not one of us")
            for d, fellow in fellows.items()}
