"""Near-copies: a checker rejects updates that are (almost) another one."""

from __future__ import annotations

import torch

from swarmtrain.peer.round.copies import NEAR_COPY_COSINE, cosine, near_copies
from swarmtrain.peer.training.faults import perturbed_copy


def _update(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(64, 8, generator=g), "b": torch.randn(8, generator=g)}


def test_a_perturbed_copy_of_last_rounds_update_is_named_and_independent_ones_pass() -> None:
    merged = {b"\x01" * 32: _update(1)}
    copy = perturbed_copy(merged[b"\x01" * 32], torch.Generator().manual_seed(9))
    found = near_copies({b"\x02" * 32: copy, b"\x03" * 32: _update(3)}, merged)
    assert set(found) == {b"\x02" * 32}
    assert found[b"\x02" * 32] == "near-copy of update 010101010101 merged last round (cosine 1.000)"


def test_two_near_copies_in_one_round_are_both_rejected() -> None:
    original = _update(5)
    twin = perturbed_copy(original, torch.Generator().manual_seed(6))
    found = near_copies({b"\x0a" * 32: original, b"\x0b" * 32: twin, b"\x0c" * 32: _update(7)}, {})
    assert set(found) == {b"\x0a" * 32, b"\x0b" * 32}
    assert "of this round" in found[b"\x0a" * 32]


def test_similar_but_independent_updates_are_not_copies() -> None:
    # Two updates sharing a common direction, as honest pseudo-gradients do (measured up to
    # 0.87 in a round on the demo model): below the threshold, both pass.
    common, a, b = _update(11), _update(12), _update(13)
    first = {n: common[n] + 0.5 * a[n] for n in common}
    second = {n: common[n] + 0.5 * b[n] for n in common}
    flat = [torch.cat([u[n].flatten().double() for n in sorted(u)]) for u in (first, second)]
    assert 0.7 < cosine(*flat) < NEAR_COPY_COSINE
    assert near_copies({b"\x01" * 32: first}, {b"\x02" * 32: second}) == {}


def test_cosine_of_zero_or_mismatched_vectors_is_zero() -> None:
    assert cosine(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)) == 0.0
    assert cosine(torch.ones(4, dtype=torch.float64), torch.ones(5, dtype=torch.float64)) == 0.0
