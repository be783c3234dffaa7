"""Training that never waits for the network: inner steps back to back on their own thread.

The round engine (main thread) only ever asks the worker for a snapshot at a commit time
and hands it the next version to rebase onto; both happen between two inner steps, so
the model is never read or written mid-step. Everything else (encoding, checking,
voting, merging, downloading) runs beside the training, not instead of it.

A failure inside the training thread (a task that runs out of data, a CUDA error) is
kept and raised again in the caller at its next request: it is this peer's own problem
and must stop it loudly, never turn into a silent stall.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from swarmtrain.peer.training.progress import ProgressTracker, Snapshot


class WorkerError(RuntimeError):
    """The training thread stopped with an error (chained); the peer cannot go on."""


@dataclass(frozen=True)
class WorkerStats:
    """Counters since the worker started: what ``status`` shows as utilisation and speed."""

    steps: int
    samples: int
    busy_seconds: float   # time inside inner steps
    wall_seconds: float   # time since start

    @property
    def utilisation(self) -> float:
        return self.busy_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.wall_seconds if self.wall_seconds > 0 else 0.0


class TrainingWorker:
    """Runs ``tracker``'s inner steps on a daemon thread until :meth:`stop`.

    At most ``max_steps`` steps are taken between two snapshots (a round's H): a peer
    that reaches them waits for the next commit point, so no update stands far outside
    the round's norms and the outer step stays in the regime it was tuned for.
    ``trains=False`` (the free-rider fault) starts no steps at all: snapshots then show
    no progress.
    """

    def __init__(self, tracker: ProgressTracker, *, max_steps: int | None = None, trains: bool = True,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.tracker = tracker
        self._max_steps = max_steps
        self._trains = trains
        self._monotonic = monotonic
        self._turn = threading.Condition()
        self._busy = False       # a step is running (the model is in use)
        self._waiting = 0        # requests waiting for the step to end
        self._stop = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._started_at = monotonic()

    def start(self) -> None:
        self._started_at = self._monotonic()
        if self._trains:
            self._thread = threading.Thread(target=self._loop, name="swarmtrain-training", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        try:
            while True:
                with self._turn:
                    while (self._waiting or self._at_cap()) and not self._stop:
                        self._turn.wait()
                    if self._stop:
                        return
                    self._busy = True
                try:
                    self.tracker.train(1)
                finally:
                    with self._turn:
                        self._busy = False
                        self._turn.notify_all()
        except BaseException as error:  # re-raised in the caller's thread, never swallowed
            with self._turn:
                self._error = error
                self._turn.notify_all()

    def _at_cap(self) -> bool:
        return self._max_steps is not None and self.tracker.steps_since_snapshot >= self._max_steps

    def _between_steps(self, action: Callable[[], object]) -> object:
        with self._turn:
            self._raise_if_failed()
            self._waiting += 1
            try:
                while self._busy:
                    self._turn.wait()
                self._raise_if_failed()
                return action()
            finally:
                self._waiting -= 1
                self._turn.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WorkerError(f"local training stopped: {type(self._error).__name__}: {self._error}") \
                from self._error

    def snapshot(self) -> Snapshot:
        """The commit point (see :meth:`ProgressTracker.snapshot`); training goes on after it."""
        snap = self._between_steps(self.tracker.snapshot)
        assert isinstance(snap, Snapshot)
        return snap

    def rebase(self, params: Mapping[str, Tensor], version: bytes, *, carry: bool = True) -> None:
        """Carry the progress since the last snapshot onto ``version`` (no-op if already there)."""
        if version == self.tracker.base_version:
            return
        self._between_steps(lambda: self.tracker.rebase(params, version, carry=carry))

    def stats(self) -> WorkerStats:
        with self._turn:
            return WorkerStats(steps=self.tracker.total_steps, samples=self.tracker.total_samples,
                               busy_seconds=self.tracker.busy_seconds,
                               wall_seconds=self._monotonic() - self._started_at)

    def exclusive(self, action: Callable[[], object]) -> object:
        """Run ``action`` between two steps (e.g. saving the inner optimizer state)."""
        return self._between_steps(action)

    def stop(self) -> None:
        with self._turn:
            self._stop = True
            self._turn.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
