"""What the merge refuses or bounds even when the votes accepted it (a captured check):
payloads that do not fit the model or the swarm's settings, huge updates, and results
that are not finite. Every honest peer computes the same answer, so they still agree."""

from __future__ import annotations

import math

import torch

from swarmtrain.peer.config import AVERAGE, DENSE, CodecConfig
from swarmtrain.peer.round.merge import OuterOptimizer, exact_norm, merge_round, next_version
from swarmtrain.protocol import encode_update, version_id

PARENT = b"\x01" * 32
PARAMS = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}


def _payload(scale: float = 1.0, seed: int = 0, codec: CodecConfig = DENSE) -> bytes:
    g = torch.Generator().manual_seed(seed)
    tensors = {"w": torch.randn(4, 3, generator=g) * scale, "b": torch.randn(3, generator=g) * scale}
    return encode_update(tensors, density=codec.density, bits=codec.bits, chunk=codec.chunk)


def _merge(accepted: dict[bytes, tuple[int, bytes]], codec: CodecConfig = DENSE):  # type: ignore[no-untyped-def]
    return merge_round(PARAMS, PARENT, accepted, OuterOptimizer(AVERAGE), codec=codec, clip_ratio=4.0)


def test_honest_updates_merge_exactly_as_before() -> None:
    accepted = {bytes([i]) * 32: (10, _payload(seed=i)) for i in range(3)}
    outcome = _merge(accepted)
    assert outcome.refused == {}
    assert outcome.version.version_id == version_id(PARENT, tuple(sorted(accepted)))


def test_one_huge_accepted_update_is_clipped_and_the_version_stays_finite() -> None:
    """Before: one accepted update of 1e30s overflowed the merged model, and every honest
    peer crashed in the next round."""
    accepted = {bytes([i]) * 32: (10, _payload(seed=i)) for i in range(3)}
    accepted[b"\xff" * 32] = (10, _payload(scale=1e37, seed=9))
    outcome = _merge(accepted)
    params = outcome.version.params
    assert all(bool(torch.isfinite(t).all()) for t in params.values())
    honest = [exact_norm({"w": torch.randn(4, 3, generator=torch.Generator().manual_seed(i))}) for i in range(3)]
    # The huge one counts at most 4x the median norm: the step stays of honest size.
    assert exact_norm(params) < 4 * 4 * max(honest)
    assert outcome.version.accepted == tuple(sorted(accepted))  # clipped, not dropped


def test_a_result_that_is_not_finite_is_never_kept() -> None:
    """A majority of huge updates (a captured round) moves even the median: then the round
    merges nothing and the parent's parameters go on."""
    accepted = {bytes([i]) * 32: (10, _payload(scale=3e38 / 4, seed=i)) for i in range(3)}
    outcome = _merge(accepted)
    assert outcome.version.version_id == version_id(PARENT, ())
    assert all(torch.equal(outcome.version.params[n], PARAMS[n]) for n in PARAMS)
    assert set(outcome.refused) == set(accepted) and all("not finite" in r for r in outcome.refused.values())


def test_payloads_that_do_not_fit_the_model_or_the_swarm_are_refused_at_merge() -> None:
    good = {b"\x00" * 32: (10, _payload())}
    # Within the model's element count, but under a name the model lacks.
    foreign = {b"\x10" * 32: (10, encode_update({"w": torch.ones(4, 3), "zz": torch.ones(3)}, density=1.0, bits=32))}
    outcome = _merge({**good, **foreign})
    assert "unknown tensors" in outcome.refused[b"\x10" * 32]
    assert outcome.version.version_id == version_id(PARENT, (b"\x00" * 32,))
    compressed = CodecConfig(density=0.5, bits=2, chunk=4)
    dense_into_2bit = _merge({b"\x20" * 32: (10, _payload())}, codec=compressed)
    assert "codec settings" in dense_into_2bit.refused[b"\x20" * 32]
    with_meta = encode_update({"w": torch.ones(4, 3), "b": torch.ones(3)}, density=1.0, bits=32,
                              metadata={"nonce": 7})
    assert "metadata" in _merge({b"\x30" * 32: (10, with_meta)}).refused[b"\x30" * 32]


def test_exact_norm_is_the_correctly_rounded_norm_whatever_the_order() -> None:
    g = torch.Generator().manual_seed(4)
    tensors = {"a": torch.randn(1000, generator=g), "b": torch.randn(7, 7, generator=g) * 1e20}
    reference = math.sqrt(math.fsum(float(x) ** 2 for t in tensors.values() for x in t.flatten().tolist()))
    assert exact_norm(tensors) == reference == exact_norm(dict(reversed(list(tensors.items()))))


def test_clipping_leaves_the_plain_merge_of_honest_updates_bit_for_bit() -> None:
    from swarmtrain.peer.round.merge import AcceptedUpdate
    from swarmtrain.protocol import decode_update
    accepted = {bytes([i]) * 32: (10 + i, _payload(seed=i)) for i in range(4)}
    plain = next_version(PARAMS, PARENT, [AcceptedUpdate(d, w, decode_update(p)) for d, (w, p) in accepted.items()],
                         OuterOptimizer(AVERAGE))
    assert _merge(accepted).version.state_checksum == plain.state_checksum
