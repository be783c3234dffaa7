"""Digests: canonical (order-free where they should be) and sensitive to every bit."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from swarmtrain.protocol import (
    encode_update,
    genesis_version_id,
    state_checksum,
    update_digest,
    version_id,
)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "emb.weight": torch.randn(4, 3, generator=g),
        "ln.bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "step": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 2),
    }


def test_update_digest_is_blake2b_256_of_the_payload() -> None:
    payload = encode_update({"x": torch.arange(10.0)}, density=0.5)
    digest = update_digest(payload)
    assert len(digest) == 32
    assert digest == hashlib.blake2b(payload, digest_size=32).digest()
    assert update_digest(payload[:-1] + bytes([payload[-1] ^ 1])) != digest


def test_state_checksum_ignores_insertion_order_and_memory_layout() -> None:
    state = _state()
    reordered = {k: state[k] for k in reversed(list(state))}
    assert state_checksum(reordered) == state_checksum(state)
    transposed = state["emb.weight"].t().contiguous().t()  # same values, other strides
    assert not transposed.is_contiguous()
    assert state_checksum({**state, "emb.weight": transposed}) == state_checksum(state)
    assert len(state_checksum(state)) == 32


def test_state_checksum_changes_with_every_bit() -> None:
    state = {"w": torch.tensor([1.0, -2.0, 0.5, 3.0])}
    base = state_checksum(state)
    seen = {base}
    raw = state["w"].numpy().view(np.uint32)
    for i in range(raw.size):
        for bit in range(32):
            flipped = raw.copy()
            flipped[i] ^= np.uint32(1 << bit)
            seen.add(state_checksum({"w": torch.from_numpy(flipped.view(np.float32))}))
    assert len(seen) == 1 + 4 * 32


def test_state_checksum_covers_name_dtype_shape_and_sign_of_zero() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    base = state_checksum({"w": x})
    variants = [
        {"v": x},                                      # name
        {"w": x.view(torch.int32)},                    # same bytes, other dtype
        {"w": x.reshape(2, 2)},                        # same bytes, other shape
        {"w": torch.tensor([-0.0, 1.0, 2.0, 3.0])},    # -0.0 == 0.0 but not the same bits
        {"w": x, "extra": torch.zeros(0)},             # one more (empty) tensor
        {"w": x[:3]},
    ]
    checksums = {state_checksum(v) for v in variants}
    assert base not in checksums and len(checksums) == len(variants)


def test_state_checksum_field_boundaries_are_unambiguous() -> None:
    assert state_checksum({"ab": torch.zeros(1)}) != state_checksum({"a": torch.zeros(1), "b": torch.zeros(0)})


def test_version_id_ignores_order_of_accepted_digests() -> None:
    parent = genesis_version_id(state_checksum(_state()))
    digests = [update_digest(bytes([i])) for i in range(5)]
    vid = version_id(parent, digests)
    assert vid == version_id(parent, list(reversed(digests)))
    assert vid == version_id(bytearray(parent), iter(sorted(digests)))
    assert len(vid) == 32


def test_version_id_depends_on_parent_and_on_the_set() -> None:
    parent = genesis_version_id(bytes(32))
    other_parent = genesis_version_id(b"\x01" * 32)
    digests = [update_digest(bytes([i])) for i in range(3)]
    ids = {
        version_id(parent, digests),
        version_id(other_parent, digests),
        version_id(parent, digests[:2]),
        version_id(parent, []),
        version_id(parent, digests + digests[:1]),
        parent,
    }
    assert len(ids) == 6


def test_genesis_is_domain_separated_from_versions() -> None:
    checksum = state_checksum(_state())
    assert genesis_version_id(checksum) != version_id(checksum, [])
    assert genesis_version_id(checksum) != checksum


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_digest_arguments_must_be_32_bytes(bad: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        version_id(bad, [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        version_id(bytes(32), [bad])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="32 bytes"):
        genesis_version_id(bad)  # type: ignore[arg-type]
