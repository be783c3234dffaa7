from __future__ import annotations

import pytest

from swarmtrain.peer.config import ConfigError, RoundTiming
from swarmtrain.peer.round.clock import ManualClock, Phase, PhaseClock

# A commit point every 10 s; each round's exchange takes 2 + 3 + 4 = 9 s of the next window.
TIMING = RoundTiming(train_s=10.0, commit_s=2.0, vote_s=3.0, agree_s=4.0)


@pytest.mark.parametrize(
    ("offset", "round_index", "phase", "end"),
    [
        (-5.0, 0, Phase.TRAIN, 10.0),
        (0.0, 0, Phase.TRAIN, 10.0),
        (9.99, 0, Phase.TRAIN, 10.0),
        (10.0, 0, Phase.COMMIT, 12.0),
        (12.5, 0, Phase.VOTE, 15.0),
        (15.0, 0, Phase.AGREE, 19.0),
        (19.0, 1, Phase.TRAIN, 20.0),     # round 0's exchange is over, round 1 trains on
        (20.0, 1, Phase.COMMIT, 22.0),
        (70 + 3.0, 6, Phase.VOTE, 75.0),
    ],
)
def test_position(offset: float, round_index: int, phase: Phase, end: float) -> None:
    clock = PhaseClock(1000.0, TIMING)
    pos = clock.position(1000.0 + offset)
    assert (pos.round, pos.phase) == (round_index, phase)
    assert pos.phase_end == pytest.approx(1000.0 + end)


def test_rounds_are_pipelined_and_deadlines_ordered() -> None:
    clock = PhaseClock(0.0, TIMING)
    ends = [clock.deadline(3, p) for p in Phase]
    assert ends == sorted(ends)
    # Round 3 commits when round 4's window opens, and its exchange ends before round 4 commits.
    assert clock.deadline(3, Phase.TRAIN) == clock.round_start(4)
    assert clock.deadline(3, Phase.AGREE) <= clock.deadline(4, Phase.TRAIN)
    assert clock.training_round(clock.deadline(3, Phase.TRAIN)) == 4


def test_an_exchange_longer_than_the_training_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="must fit in timing.train_s"):
        RoundTiming(train_s=5.0, commit_s=2.0, vote_s=3.0, agree_s=1.0)


def test_manual_clock_jumps_forward_only() -> None:
    clock = ManualClock(100.0)
    clock.sleep_until(105.0)
    assert clock.time() == 105.0
    clock.sleep_until(101.0)  # a moment that has passed: no change
    assert clock.time() == 105.0
    clock.advance(2.5)
    assert clock.time() == 107.5
