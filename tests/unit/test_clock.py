from __future__ import annotations

import pytest

from swarmtrain.peer.clock import Phase, PhaseClock
from swarmtrain.peer.config import RoundTiming

TIMING = RoundTiming(train_s=10.0, commit_s=2.0, vote_s=3.0, agree_s=5.0)  # 20 s a round


@pytest.mark.parametrize(
    ("offset", "round_index", "phase", "end"),
    [
        (-5.0, 0, Phase.TRAIN, 10.0),
        (0.0, 0, Phase.TRAIN, 10.0),
        (9.99, 0, Phase.TRAIN, 10.0),
        (10.0, 0, Phase.COMMIT, 12.0),
        (12.5, 0, Phase.VOTE, 15.0),
        (15.0, 0, Phase.AGREE, 20.0),
        (20.0, 1, Phase.TRAIN, 30.0),
        (20 * 7 + 13.0, 7, Phase.VOTE, 20 * 7 + 15.0),
    ],
)
def test_position(offset: float, round_index: int, phase: Phase, end: float) -> None:
    clock = PhaseClock(1000.0, TIMING)
    pos = clock.position(1000.0 + offset)
    assert (pos.round, pos.phase) == (round_index, phase)
    assert pos.phase_end == pytest.approx(1000.0 + end)


def test_deadlines_are_ordered() -> None:
    clock = PhaseClock(0.0, TIMING)
    ends = [clock.deadline(3, p) for p in Phase]
    assert ends == sorted(ends) and ends[-1] == clock.round_start(4)
