"""Local progress that is never thrown away: snapshots for commits, rebases onto new versions.

A peer trains back to back. At a round's commit time it takes a :class:`Snapshot` of its
parameters; the pseudo-gradient of that round is ``base - snapshot``, where ``base`` is
the version its trajectory is measured from. Training goes on while the round's checks,
votes and merge run. When the next version ``V'`` is adopted, the peer carries the
progress it made since the snapshot (its *anchor*) onto ``V'``::

    params <- V' + (params - anchor)          then base = anchor = V'

This is the one-round-delayed outer update of streaming / eager DiLoCo: no inner step
is wasted, and the progress made during the round's communication is sent in the next
round (it is part of ``V' - next snapshot``). Before any snapshot the anchor is the base,
so a peer that skipped a commit carries all its progress onto the new version.

:class:`ProgressTracker` is synchronous (the simulator steps it exactly);
:mod:`.worker` runs it on its own thread for the networked peer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from swarmtrain.peer.training.trainer import LocalTrainer, TrainReport


@dataclass(frozen=True)
class Snapshot:
    """The trainer at a commit point, with what it did since the previous snapshot."""

    params: dict[str, Tensor]   # fp32 CPU copies
    base: dict[str, Tensor]     # the version the pseudo-gradient is measured from
    base_version: bytes
    steps: int
    samples: int
    train_loss: float           # mean over those steps (NaN when none)
    train_seconds: float        # time spent inside those steps


def rebased(target: Mapping[str, Tensor], current: Mapping[str, Tensor],
            anchor: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``target + (current - anchor)`` per tensor, as two plain fp32 ops in that order.

    With no progress since the anchor the difference is exactly zero, so the result is
    ``target`` bit for bit: a peer that did not train since its snapshot holds exactly
    the version it adopted.
    """
    return {name: target[name] + (current[name] - anchor[name]) for name in target}


def carries_progress(*, new: str, new_parent: str | None, held: str, held_parent: str | None) -> bool:
    """Whether progress measured from version ``held`` is carried onto version ``new``.

    Yes when ``new`` is next to ``held`` in the history: its child (the next version),
    its sibling (the majority's V(r+1) after this peer's own), or its parent (back to
    V(r) when the agree step could not be resolved). Progress made on a version the swarm
    has since left several rounds behind would be applied to a model that moved on
    without it, so it is dropped.
    """
    neighbours = {held} if held_parent is None else {held, held_parent}
    return new_parent in neighbours or (held_parent is not None and new == held_parent)


class ProgressTracker:
    """A :class:`LocalTrainer` plus its base, anchor and counters since the last snapshot."""

    def __init__(self, trainer: LocalTrainer, params: Mapping[str, Tensor], version: bytes,
                 *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.trainer = trainer
        self._monotonic = monotonic
        trainer.load_params(params)
        self._base = {name: t.detach().to(torch.float32).clone() for name, t in params.items()}
        self._anchor = self._base
        self.base_version = version
        self._reset_counters()
        self.total_steps = 0
        self.total_samples = 0
        self.busy_seconds = 0.0  # time inside inner steps, over the tracker's life

    @property
    def steps_since_snapshot(self) -> int:
        return self._steps

    def _reset_counters(self) -> None:
        self._steps = self._samples = 0
        self._loss_sum = 0.0
        self._seconds = 0.0

    def train(self, steps: int, deadline: float | None = None) -> TrainReport:
        """Up to ``steps`` inner steps (``deadline`` on the monotonic clock)."""
        report = self.trainer.run(steps, deadline=deadline)
        self._steps += report.steps
        self._samples += report.samples
        if report.steps:
            self._loss_sum += report.mean_loss * report.steps
        self._seconds += report.seconds
        self.total_steps += report.steps
        self.total_samples += report.samples
        self.busy_seconds += report.seconds
        return report

    def snapshot(self) -> Snapshot:
        """The commit point: current parameters become the anchor; counters restart."""
        params = self.trainer.params()
        snap = Snapshot(
            params=params, base=self._base, base_version=self.base_version, steps=self._steps,
            samples=self._samples, train_loss=self._loss_sum / self._steps if self._steps else math.nan,
            train_seconds=self._seconds,
        )
        self._anchor = params
        self._reset_counters()
        return snap

    def rebase(self, params: Mapping[str, Tensor], version: bytes, *, carry: bool = True) -> None:
        """Adopt version ``params``, carrying the progress made since the anchor onto it.

        ``carry=False`` starts exactly at ``params`` instead: for a version that is not
        the direct successor of the base (a peer that fell rounds behind), where the old
        progress would be applied to a model that has moved on without it.
        """
        target = {name: t.detach().to(torch.float32) for name, t in params.items()}
        self.trainer.load_params(rebased(target, self.trainer.params(), self._anchor) if carry else target)
        self._base = {name: t.clone() for name, t in target.items()}
        self._anchor = self._base
        self.base_version = version
