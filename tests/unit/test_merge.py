"""Merge math: weighted mean in digest order, outer steps, bit-identical results."""

from __future__ import annotations

import random

import pytest
import torch

from swarmtrain.peer.config import AVERAGE, OuterConfig
from swarmtrain.peer.round.merge import (AcceptedUpdate, MergeError, OuterOptimizer, apply_step, next_version,
                                   weighted_mean)


def _updates(n: int, seed: int = 0) -> list[AcceptedUpdate]:
    g = torch.Generator().manual_seed(seed)
    return [
        AcceptedUpdate(
            digest=bytes([i]) * 32,
            samples=1 + i * 7,
            tensors={"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g)},
        )
        for i in range(n)
    ]


def test_weighted_mean_matches_formula() -> None:
    ups = _updates(3)
    merged = weighted_mean(ups, ["w", "b"])
    assert merged is not None
    total = sum(u.samples for u in ups)
    expected = sum(u.tensors["w"].double() * u.samples for u in ups) / total
    assert torch.allclose(merged["w"].double(), expected, atol=1e-6)


def test_weighted_mean_is_independent_of_input_order_bitwise() -> None:
    ups = _updates(6, seed=3)
    shuffled = ups[:]
    random.Random(1).shuffle(shuffled)
    a = weighted_mean(ups, ["w", "b"])
    b = weighted_mean(shuffled, ["w", "b"])
    assert a is not None and b is not None
    for name in a:
        assert torch.equal(a[name], b[name])


def test_weighted_mean_of_nothing_is_none() -> None:
    assert weighted_mean([], ["w"]) is None


def test_apply_step_rejects_shape_mismatch() -> None:
    with pytest.raises(MergeError, match="shape"):
        apply_step({"w": torch.zeros(2, 2)}, {"w": torch.zeros(4)}, 1.0)


def test_sparseloco_step_is_plain_subtraction() -> None:
    outer = OuterOptimizer(OuterConfig(kind="sparseloco", lr=0.5))
    params = {"w": torch.ones(4)}
    new = outer.step(params, {"w": torch.full((4,), 2.0)})
    assert torch.equal(new["w"], torch.zeros(4))
    assert outer.state() == {}


def test_nesterov_step_and_state() -> None:
    outer = OuterOptimizer(OuterConfig(kind="nesterov", lr=1.0, momentum=0.5, ef_decay=0.0))
    params = {"w": torch.zeros(2)}
    g = {"w": torch.ones(2)}
    p1 = outer.step(params, g)          # m = 1, step = 1 + 0.5*1 = 1.5
    assert torch.equal(p1["w"], torch.full((2,), -1.5))
    p2 = outer.step(p1, g)              # m = 1.5, step = 1 + 0.75 = 1.75
    assert torch.equal(p2["w"], torch.full((2,), -3.25))
    state = outer.state()
    assert torch.equal(state["outer.momentum.w"], torch.full((2,), 1.5))
    other = OuterOptimizer(outer.config)
    other.load_state(state)
    assert torch.equal(other.step(p2, g)["w"], outer.step(p2, g)["w"])


def test_the_plain_mean_keeps_no_outer_state() -> None:
    """AVERAGE (Nesterov without momentum) is params - lr * mean: no buffer, so a version's
    state (and what a resyncing peer downloads) is its parameters alone."""
    outer = OuterOptimizer(AVERAGE)
    new = outer.step({"w": torch.ones(3)}, {"w": torch.full((3,), 0.25)})
    assert torch.equal(new["w"], torch.full((3,), 0.75)) and outer.state() == {}


def test_no_accepted_updates_keeps_parameters_but_advances_version() -> None:
    outer = OuterOptimizer(OuterConfig())
    params = {"w": torch.arange(4.0)}
    nv = next_version(params, b"\x00" * 32, [], outer)
    assert torch.equal(nv.params["w"], params["w"])
    assert nv.version_id != b"\x00" * 32 and nv.accepted == ()


def test_two_merges_are_bit_identical_and_ids_agree() -> None:
    params = {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(5)), "b": torch.zeros(3)}
    ups = _updates(4, seed=9)
    ups = [AcceptedUpdate(u.digest, u.samples, {"w": torch.randn(64, 64), "b": u.tensors["b"]}) for u in ups]
    a = next_version(params, b"p" * 32, ups, OuterOptimizer(OuterConfig(kind="nesterov", ef_decay=0.0)))
    b = next_version(params, b"p" * 32, list(reversed(ups)), OuterOptimizer(OuterConfig(kind="nesterov", ef_decay=0.0)))
    assert a.version_id == b.version_id
    assert a.state_checksum == b.state_checksum
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_checksum_covers_outer_state() -> None:
    params = {"w": torch.zeros(3)}
    ups = _updates(1)
    ups = [AcceptedUpdate(ups[0].digest, 1, {"w": torch.ones(3)})]
    o1 = OuterOptimizer(OuterConfig(kind="nesterov", ef_decay=0.0, momentum=0.5))
    o2 = OuterOptimizer(OuterConfig(kind="nesterov", ef_decay=0.0, momentum=0.5))
    o2.load_state({"outer.momentum.w": torch.ones(3)})
    a = next_version(params, b"p" * 32, ups, o1)
    b = next_version(params, b"p" * 32, ups, o2)
    assert a.state_checksum != b.state_checksum
