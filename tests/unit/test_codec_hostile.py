"""Hostile payloads: the decoder raises ProtocolError and nothing else, and never over-allocates."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmtrain.protocol import ProtocolError, decode_update, encode_update, read_update
from swarmtrain.protocol.packing import pack_uints


def _small_payload(bits: int = 8) -> bytes:
    g = torch.Generator().manual_seed(3)
    tensors = {"a": torch.randn(20, generator=g), "b": torch.randn(2, 3, generator=g), "c": torch.tensor(1.5)}
    return encode_update(tensors, density=0.125, bits=bits, chunk=16, metadata={"round": 1})


def _doc(payload: bytes) -> dict[str, Any]:
    return msgpack.unpackb(payload, raw=False)


def _pack(doc: Any) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def _rejects(payload: Any, match: str | None = None, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError, match=match) as info:
        decode_update(payload, **kwargs)
    return info.value


def _decode_or_protocol_error(payload: bytes) -> dict[str, torch.Tensor] | None:
    """Anything but ProtocolError escaping fails the test; a success must be finite."""
    try:
        tensors = decode_update(payload)
    except ProtocolError:
        return None
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
    return tensors


def test_small_payload_is_valid_to_begin_with() -> None:
    assert set(decode_update(_small_payload())) == {"a", "b", "c"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _rejects(data)


@pytest.mark.parametrize("bits", [2, 8, 32])
def test_every_truncation_and_extension(bits: int) -> None:
    payload = _small_payload(bits)
    for cut in range(len(payload)):
        _rejects(payload[:cut])
    _rejects(payload + b"\x00")


def test_every_single_bit_flip() -> None:
    payload = _small_payload(bits=2)
    survived = 0
    for pos in range(len(payload)):
        for bit in (0, 7):
            flipped = bytearray(payload)
            flipped[pos] ^= 1 << bit
            survived += _decode_or_protocol_error(bytes(flipped)) is not None
    # Flips inside value codes still decode (to other values); the rest must be caught.
    assert survived < len(payload)


WRONG_VALUES: list[Any] = [None, True, -1, 2**64 - 1, 1.5, float("nan"), "x", b"x", [], {}, [1, 2], {"k": 1}]


def _mutations() -> list[tuple[str, Callable[[dict[str, Any], Any], None]]]:
    def top(key: str) -> Callable[[dict[str, Any], Any], None]:
        return lambda doc, value: doc.__setitem__(key, value)

    def entry(key: str) -> Callable[[dict[str, Any], Any], None]:
        return lambda doc, value: doc["tensors"][0].__setitem__(key, value)

    fields = [(f"top.{k}", top(k)) for k in ("bits", "chunk", "density", "format", "meta", "tensors")]
    fields += [(f"tensor.{k}", entry(k)) for k in ("i", "n", "q", "s", "v")]
    fields.append(("tensor entry", lambda doc, value: doc["tensors"].__setitem__(0, value)))
    fields.append(("shape dim", lambda doc, value: doc["tensors"][0]["s"].__setitem__(0, value)))
    return fields


@pytest.mark.parametrize(("field", "mutate"), _mutations())
def test_wrong_types_in_every_field(field: str, mutate: Callable[[dict[str, Any], Any], None]) -> None:
    payload = _small_payload()
    for value in WRONG_VALUES:
        doc = _doc(payload)
        mutate(doc, value)
        mutated = _pack(doc)
        if mutated == payload:
            continue
        if field == "top.meta" and isinstance(value, dict):
            assert decode_update(mutated).keys() == {"a", "b", "c"}  # another metadata map is valid
            continue
        if field == "top.tensors" and value == []:
            assert decode_update(mutated) == {}  # an update of no tensors is valid
            continue
        _rejects(mutated)


def test_missing_and_extra_keys() -> None:
    for key in ("bits", "tensors", "meta"):
        doc = _doc(_small_payload())
        del doc[key]
        _rejects(_pack(doc))
    doc = _doc(_small_payload())
    doc["zzz"] = 1
    _rejects(_pack(doc))
    doc = _doc(_small_payload())
    del doc["tensors"][1]["q"]
    _rejects(_pack(doc))


def test_unknown_format_names_the_supported_one() -> None:
    doc = _doc(_small_payload())
    doc["format"] = 2
    _rejects(_pack(doc), match="format 1")


def _fast_rejection(doc: dict[str, Any], match: str, **kwargs: Any) -> None:
    start = time.perf_counter()
    _rejects(_pack(doc), match=match, **kwargs)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("shape", [[2**20, 2**20], [2**40], [2**63, 0], [2**64 - 1, 0], [2**14] * 8])
def test_huge_declared_shapes_fail_fast_on_the_limit(shape: list[int]) -> None:
    doc = _doc(_small_payload())
    doc["tensors"][0]["s"] = shape
    _fast_rejection(doc, match="exceeds|dims must be")


def test_total_elements_are_capped_across_tensors() -> None:
    payload = encode_update({f"t{i}": torch.ones(600) for i in range(3)}, density=0.01, bits=8)
    assert len(decode_update(payload, max_elements=1800)) == 3
    _rejects(payload, match="elements in all", max_elements=1799)


def test_too_many_dims_and_too_many_tensors() -> None:
    doc = _doc(_small_payload())
    doc["tensors"][2]["s"] = [1] * 9
    _rejects(_pack(doc), match="at most 8")
    # A msgpack array header that claims 2**32 - 1 entries must not be believed.
    doc = _doc(_small_payload())
    raw = _pack(doc)
    key = _pack("tensors")
    at = raw.index(key) + len(key)
    bomb = raw[:at] + b"\xdd\xff\xff\xff\xff"
    _rejects(bomb)


def test_duplicate_and_unsorted_names() -> None:
    doc = _doc(_small_payload())
    doc["tensors"][1] = dict(doc["tensors"][0])
    _rejects(_pack(doc), match="unique and sorted")
    doc = _doc(_small_payload())
    doc["tensors"][0], doc["tensors"][1] = doc["tensors"][1], doc["tensors"][0]
    _rejects(_pack(doc), match="unique and sorted")


def test_long_and_empty_names() -> None:
    for name in ("", "a" * 1025):
        doc = _doc(_small_payload())
        doc["tensors"][0]["n"] = name
        _rejects(_pack(doc), match="name")


def _sparse_doc() -> dict[str, Any]:
    # 20 elements, chunk 16, density 1/8: a full chunk keeping 2 and a tail of 4 keeping 1.
    return _doc(encode_update({"a": torch.arange(1.0, 21.0)}, density=0.125, bits=8, chunk=16))


@pytest.mark.parametrize(("indices", "match"), [
    ([3, 3, 0], "strictly increasing"),
    ([9, 3, 0], "strictly increasing"),
    ([3, 9, 7], "outside its chunk"),  # the tail chunk has 4 elements
])
def test_bad_indices(indices: list[int], match: str) -> None:
    doc = _sparse_doc()
    assert len(doc["tensors"][0]["i"]) == 2  # 3 indices x 4 bits, padded to 2 bytes
    doc["tensors"][0]["i"] = pack_uints(np.array(indices), 4)
    _rejects(_pack(doc), match=match)


def test_nonzero_padding_bits_are_not_canonical() -> None:
    doc = _doc(encode_update({"a": torch.arange(1.0, 4.0)}, density=1.0, bits=2, chunk=4))
    val = bytearray(doc["tensors"][0]["v"])
    val[-1] |= 0b1100_0000  # bits past the third 2-bit code
    doc["tensors"][0]["v"] = bytes(val)
    _rejects(_pack(doc), match="padding")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, -0.0, 3.0e38])
def test_bad_steps(bad: float) -> None:
    # 3e38 is finite, but 255 * 3e38 overflows float32: the update would decode to inf.
    doc = _sparse_doc()
    doc["tensors"][0]["q"] = struct.pack("<f", bad) + doc["tensors"][0]["q"][4:]
    _rejects(_pack(doc), match="step")


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_non_finite_raw_values(bad: float) -> None:
    doc = _doc(encode_update({"a": torch.ones(5)}, density=1.0, bits=32))
    doc["tensors"][0]["v"] = struct.pack("<f", bad) + doc["tensors"][0]["v"][4:]
    _rejects(_pack(doc), match="NaN or inf")


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    bits=st.sampled_from([2, 4, 8, 32]),
    density=st.sampled_from([0.001, 0.01, 0.3, 1.0]),
)
def test_unchecked_non_finite_input_builds_a_payload_every_decoder_rejects(
    n: int, seed: int, bad: float, bits: int, density: float
) -> None:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 1e3)
    x[int(rng.integers(n))] = bad
    payload = encode_update({"x": x}, density=density, bits=bits, chunk=256, check_finite=False)
    _rejects(payload)


def test_non_canonical_encodings_are_rejected() -> None:
    payload = _small_payload()
    doc = _doc(payload)
    reordered = dict(reversed(list(doc.items())))
    _rejects(_pack(reordered), match="canonical")
    _rejects(msgpack.packb(doc, use_bin_type=True, use_single_float=True), match="canonical")
    # "format": 1 written as a uint64 instead of a fixint.
    fixint_format = _pack("format") + b"\x01"
    assert fixint_format in payload
    _rejects(payload.replace(fixint_format, _pack("format") + b"\xcf" + (1).to_bytes(8, "big")), match="canonical")


def test_hostile_metadata() -> None:
    def with_meta(meta: Any) -> bytes:
        doc = _doc(_small_payload())
        doc["meta"] = meta
        return _pack(doc)

    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    _rejects(with_meta({"x": deep}), match="nested")
    _rejects(with_meta({"x": "y" * 70000}))
    _rejects(with_meta({"x": b"y" * 70000}), match="meta exceeds")
    _rejects(with_meta({b"k": 1}))
    _rejects(with_meta({"t": msgpack.Timestamp(1, 0)}))
    _rejects(with_meta({"e": msgpack.ExtType(3, b"abc")}))
    _rejects(b"\x91" * 5000)  # nesting bomb


@pytest.mark.parametrize("payload", ["text", None, 3, [b"x"]])
def test_non_bytes_payload(payload: Any) -> None:
    _rejects(payload)


def test_read_update_reports_the_same_errors() -> None:
    with pytest.raises(ProtocolError):
        read_update(_small_payload()[:-1])


# --- canonical form: no subnormal floats (FTZ peers would decode them as zero) ----------

SUBNORMAL = 1e-40  # below float32's smallest normal (1.18e-38), above zero


def test_a_subnormal_chunk_step_is_not_canonical() -> None:
    doc = _sparse_doc()
    doc["tensors"][0]["q"] = struct.pack("<f", SUBNORMAL) + doc["tensors"][0]["q"][4:]
    _rejects(_pack(doc), match="subnormal")


def test_a_subnormal_raw_value_is_not_canonical() -> None:
    doc = _doc(encode_update({"a": torch.ones(5)}, density=1.0, bits=32))
    doc["tensors"][0]["v"] = struct.pack("<f", -SUBNORMAL) + doc["tensors"][0]["v"][4:]
    _rejects(_pack(doc), match="subnormal")


@pytest.mark.parametrize("bits", [2, 8])
def test_the_encoder_sends_a_chunk_whose_step_would_be_subnormal_as_zeros(bits: int) -> None:
    # The second chunk's step max|x| / L is below the smallest normal.
    x = torch.tensor([0.5, -1.0, 0.25, 1.0, 2e-38, -2e-38, 2e-38, 2e-38])
    decoded = decode_update(encode_update({"a": x}, density=1.0, bits=bits, chunk=4))["a"]
    assert decoded[4:].eq(0).all() and decoded[3] > 0.9


def test_the_encoder_flushes_subnormal_dense_values_to_zero() -> None:
    x = torch.tensor([SUBNORMAL, -SUBNORMAL, 0.0, 1.0, 2e-38])
    decoded = decode_update(encode_update({"a": x}, density=1.0, bits=32))["a"]
    assert decoded.tolist()[:3] == [0.0, 0.0, 0.0] and decoded[3] == 1.0 and decoded[4] == x[4]
