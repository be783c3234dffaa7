"""Judging single updates, tallying votes, drawing checkers."""

from __future__ import annotations

import math

import pytest
import torch

from swarmtrain.peer.round.assignment import assignments, checkers_for, to_check
from swarmtrain.peer.config import VoteConfig
from swarmtrain.peer.round.vote import Tally, judge, median_norm, tally
from swarmtrain.peer.training.norms import update_norm

TARGET = torch.tensor([1.0, -2.0, 3.0])


def _loss(params: dict[str, torch.Tensor]) -> float:
    return float(((params["w"] - TARGET) ** 2).sum())


PARAMS = {"w": torch.zeros(3)}
GOOD = {"w": -0.5 * TARGET}  # V - 1.0 * update moves halfway to TARGET


def _judge(update: dict[str, torch.Tensor], median: float | None = None, **cfg: float) -> "object":
    return judge(update, params=PARAMS, loss_before=_loss(PARAMS), evaluate=_loss,
                 round_median_norm=update_norm(GOOD) if median is None else median,
                 config=VoteConfig(**cfg), step_scale=1.0)


def test_honest_update_accepted_with_loss_delta() -> None:
    v = _judge(GOOD)
    assert v.accept and v.reason == "ok"
    assert v.loss_delta is not None and v.loss_delta < 0


def test_sign_flip_rejected_by_loss() -> None:
    v = _judge({"w": -GOOD["w"]})
    assert not v.accept and "loss rose" in v.reason


def test_scaled_update_rejected_by_norm() -> None:
    v = _judge({"w": GOOD["w"] * 10})
    assert not v.accept and "above" in v.reason


def test_tiny_update_rejected_by_norm() -> None:
    v = _judge({"w": GOOD["w"] * 1e-4})
    assert not v.accept and "below" in v.reason


def test_nan_and_shape_rejected() -> None:
    assert "non-finite" in _judge({"w": torch.tensor([float("nan"), 0.0, 0.0])}).reason
    assert "shape" in _judge({"w": torch.zeros(4)}).reason
    assert "unknown" in _judge({"x": torch.zeros(3)}).reason


def test_tolerance_admits_a_small_overshoot() -> None:
    over = {"w": -2.2 * TARGET}  # V - u = 2.2 * TARGET: past the target, loss 14 -> 20.2
    assert not _judge(over, median=update_norm(over)).accept
    assert _judge(over, median=update_norm(over), tolerance=10.0).accept


def test_update_that_loses_to_its_negation_is_rejected() -> None:
    # Both directions lower this loss (as near an untrained model); the update's is the worse one.
    def lopsided(params: dict[str, torch.Tensor]) -> float:
        w0 = float(params["w"][0])
        return 5.0 - abs(w0) - 0.5 * w0

    flipped = {"w": torch.tensor([1.0, 0.0, 0.0])}  # V - u moves w0 to -1: loss 4.5, negation 3.5
    verdict = judge(flipped, params=PARAMS, loss_before=5.0, evaluate=lopsided, round_median_norm=1.0,
                    config=VoteConfig(), step_scale=1.0)
    assert not verdict.accept and "uphill" in verdict.reason
    honest = {"w": torch.tensor([-1.0, 0.0, 0.0])}
    assert judge(honest, params=PARAMS, loss_before=5.0, evaluate=lopsided, round_median_norm=1.0,
                 config=VoteConfig(), step_scale=1.0).accept


def test_median_norm_ignores_non_finite() -> None:
    assert median_norm([1.0, math.inf, 3.0]) == 2.0
    assert median_norm([]) is None


def test_tally_majority_and_ignores_unassigned_voters() -> None:
    d1, d2 = b"\x01" * 32, b"\x02" * 32
    votes = {"a": {d1: True, d2: False}, "b": {d1: True, d2: False}, "c": {d1: False, d2: True},
             "mallory": {d2: True}}
    checkers = {d1: ["a", "b", "c"], d2: ["a", "b", "c"]}
    result = tally(votes, checkers)
    assert result[d1] == Tally(2, 1) and result[d1].accepted
    assert result[d2] == Tally(1, 2) and not result[d2].accepted


def test_tie_and_no_votes_reject() -> None:
    d = b"\x03" * 32
    assert not tally({"a": {d: True}, "b": {d: False}}, {d: ["a", "b"]})[d].accepted
    assert not tally({}, {d: ["a"]})[d].accepted


def test_checkers_exclude_author_and_are_deterministic() -> None:
    peers = [f"p{i}" for i in range(10)]
    a = checkers_for(3, "p1", peers, 3)
    assert len(a) == 3 and "p1" not in a
    assert a == checkers_for(3, "p1", list(reversed(peers)), 3)
    draws = {tuple(checkers_for(r, "p1", peers, 3)) for r in range(20)}
    assert len(draws) > 5  # the draw changes with the round
    parents = {tuple(checkers_for(3, "p1", peers, 3, parent=bytes([i]) * 32)) for i in range(20)}
    assert len(parents) > 5  # ... and with the version the round builds on


def test_an_author_cannot_choose_its_checkers_by_grinding_its_digest() -> None:
    """Before, an update's point on the ring was its digest: perturbing a value gave a new
    digest and a new draw, and a few dozen tries found one where colluders check it."""
    peers = [f"p{i}" for i in range(12)]
    draws = {tuple(assignments(4, {bytes([i]) * 32: "p1"}, peers, 3, parent=b"\x42" * 32)[bytes([i]) * 32])
             for i in range(200)}
    assert len(draws) == 1  # 200 different digests, one draw: nothing to pick from


def test_small_swarm_checks_everything() -> None:
    peers = ["a", "b", "c"]
    authors = {b"\x01" * 32: "a", b"\x02" * 32: "b", b"\x03" * 32: "c"}
    table = assignments(0, authors, peers, 3)
    assert table[b"\x01" * 32] == sorted(["b", "c"], key=lambda p: table[b"\x01" * 32].index(p))
    assert set(table[b"\x01" * 32]) == {"b", "c"}
    assert to_check(0, "a", authors, peers, 3) == [b"\x02" * 32, b"\x03" * 32]


def test_the_checker_draw_hashes_each_peer_and_update_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """P peers with one update each cost 2P hashes (and a sort), not P^2 as pairwise scoring did."""
    from swarmtrain.peer.round import assignment
    calls = 0
    real = assignment._point

    def counting(seed: bytes, item: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real(seed, item)

    monkeypatch.setattr(assignment, "_point", counting)
    peers = [f"peer{i:05d}" for i in range(2000)]
    authors = {i.to_bytes(2, "big") * 16: p for i, p in enumerate(peers)}
    table = assignments(7, authors, peers, 3)
    assert calls == 2 * len(peers)
    assert all(len(c) == 3 and authors[d] not in c for d, c in table.items())
    counts: dict[str, int] = {}
    for checkers in table.values():
        for p in checkers:
            counts[p] = counts.get(p, 0) + 1
    assert max(counts.values()) <= 64, max(counts.values())  # a ballot holds at most 64 verdicts


def test_junk_updates_cannot_drag_the_reference_norm_away_from_the_checkers_own() -> None:
    """Many tiny (or huge) junk updates used to move the round's median until honest
    updates failed "above 4x median" (or "below 0.1x median")."""
    from swarmtrain.peer.round.vote import ANCHOR_RATIO, reference_norm
    honest, own = [1.1, 0.9], [1.0]
    tiny = reference_norm([*honest, *[1e-6] * 20], own)
    huge = reference_norm([*honest, *[1e6] * 20], own)
    assert tiny == 1.0 / ANCHOR_RATIO and huge == 1.0 * ANCHOR_RATIO
    config = VoteConfig()
    for ref in (tiny, huge):
        assert config.min_norm_ratio * ref <= 0.9 and 1.1 <= config.max_norm_ratio * ref
    assert reference_norm(honest, own) == 1.0  # an honest round: the plain median
    assert reference_norm([3.0], []) == 3.0    # no own update: nothing to anchor to
