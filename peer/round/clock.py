"""The phase clock: which round and phase it is, timed from the genesis time; and clocks.

All peers derive the same schedule from the genesis record, so no one has to announce a
phase change. Rounds are pipelined (training never waits): round ``r``'s commit point
is ``genesis + (r + 1) * train_s``, and its commit, vote and agree phases follow it
while round ``r + 1`` trains. hivemind's DHT refuses peers whose clocks differ by more
than 3 s, which bounds how far two peers' views of a phase boundary can drift.

Code that waits takes a :class:`Clock`, so tests drive whole rounds on a
:class:`ManualClock` without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from swarmtrain.peer.config import RoundTiming


class Phase(str, Enum):
    TRAIN = "train"
    COMMIT = "commit"
    VOTE = "vote"
    AGREE = "agree"


@dataclass(frozen=True)
class Position:
    """Where a moment falls: round, phase, and when that phase ends.

    During a round's exchange (commit, vote, agree) that round is shown; otherwise the
    round whose training window it is.
    """

    round: int
    phase: Phase
    phase_end: float


class PhaseClock:
    def __init__(self, genesis_time: float, timing: RoundTiming) -> None:
        self.genesis_time = genesis_time
        self.timing = timing

    def round_start(self, round_index: int) -> float:
        """When round ``round_index``'s training window opens (the previous commit point)."""
        return self.genesis_time + round_index * self.timing.train_s

    def deadline(self, round_index: int, phase: Phase) -> float:
        """The moment ``phase`` of ``round_index`` ends (TRAIN: the round's commit point)."""
        t = self.timing
        offsets = {
            Phase.TRAIN: t.train_s,
            Phase.COMMIT: t.train_s + t.commit_s,
            Phase.VOTE: t.train_s + t.commit_s + t.vote_s,
            Phase.AGREE: t.train_s + t.exchange_s,
        }
        return self.round_start(round_index) + offsets[phase]

    def training_round(self, now: float) -> int:
        """The round whose commit point is the next one at ``now`` (0 before genesis)."""
        if now < self.genesis_time:
            return 0
        return int(math.floor((now - self.genesis_time) / self.timing.train_s))

    def position(self, now: float) -> Position:
        """Round and phase at ``now``; before genesis it is round 0's training phase."""
        r = self.training_round(now)
        if r >= 1 and now < self.deadline(r - 1, Phase.AGREE):
            for phase in (Phase.COMMIT, Phase.VOTE, Phase.AGREE):
                end = self.deadline(r - 1, phase)
                if now < end:
                    return Position(r - 1, phase, end)
        return Position(r, Phase.TRAIN, self.deadline(r, Phase.TRAIN))


class Clock(Protocol):
    """Wall time (``time.time()`` scale, as the genesis is) and waiting for a moment."""

    def time(self) -> float: ...

    def sleep_until(self, moment: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def sleep_until(self, moment: float) -> None:
        """Sleep until ``moment``; return at once if it has passed."""
        delay = moment - time.time()
        if delay > 0:
            time.sleep(delay)


class ManualClock:
    """A clock that moves only when told (tests, and replaying rounds without waiting).

    ``sleep_until`` jumps to the moment instead of waiting, so a test drives rounds
    phase by phase; ``advance`` moves time forward by hand. Thread-safe.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def sleep_until(self, moment: float) -> None:
        with self._lock:
            self._now = max(self._now, moment)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
