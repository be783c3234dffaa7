"""The phase clock: which round and phase it is, timed from the genesis time.

All peers derive the same schedule from the genesis record, so no one has to announce a
phase change. Round ``r`` starts at ``genesis + r * round_s``; inside it the phases run
in order: train, commit, vote, agree. hivemind's DHT refuses peers whose clocks differ by
more than 3 s, which bounds how far two peers' views of a phase boundary can drift.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum

from swarmtrain.peer.config import RoundTiming


class Phase(str, Enum):
    TRAIN = "train"
    COMMIT = "commit"
    VOTE = "vote"
    AGREE = "agree"


@dataclass(frozen=True)
class Position:
    """Where a moment falls: round, phase, and when that phase ends."""

    round: int
    phase: Phase
    phase_end: float


class PhaseClock:
    def __init__(self, genesis_time: float, timing: RoundTiming) -> None:
        self.genesis_time = genesis_time
        self.timing = timing

    def round_start(self, round_index: int) -> float:
        return self.genesis_time + round_index * self.timing.round_s

    def deadline(self, round_index: int, phase: Phase) -> float:
        """The moment ``phase`` of ``round_index`` ends."""
        t = self.timing
        offsets = {
            Phase.TRAIN: t.train_s,
            Phase.COMMIT: t.train_s + t.commit_s,
            Phase.VOTE: t.train_s + t.commit_s + t.vote_s,
            Phase.AGREE: t.round_s,
        }
        return self.round_start(round_index) + offsets[phase]

    def position(self, now: float) -> Position:
        """Round and phase at ``now``; before genesis it is round 0's training phase."""
        if now < self.genesis_time:
            return Position(0, Phase.TRAIN, self.deadline(0, Phase.TRAIN))
        r = int(math.floor((now - self.genesis_time) / self.timing.round_s))
        for phase in Phase:
            end = self.deadline(r, phase)
            if now < end:
                return Position(r, phase, end)
        # Floating point at the exact boundary: the next round has begun.
        return Position(r + 1, Phase.TRAIN, self.deadline(r + 1, Phase.TRAIN))


def sleep_until(moment: float) -> None:
    """Sleep until wall-clock ``moment`` (``time.time()`` scale); return at once if past."""
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)
