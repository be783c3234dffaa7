"""Round trips of the update codec against an independent reference of the format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmtrain.protocol import (
    FORMAT_VERSION,
    codec,
    decode_update,
    encode_update,
    encode_update_and_reconstruct,
    read_update,
    update_digest,
)
from swarmtrain.protocol.packing import _pack_generic, pack_uints, unpack_uints

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _make_tensor(seed: int, shape: tuple[int, ...], dtype: torch.dtype, style: str) -> torch.Tensor:
    """Values with the cases that matter: ties (small integers), zeros, wide ranges."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape)) if shape else 1
    if style == "ties":
        values = rng.integers(-3, 4, size=n).astype(np.float64)
    elif style == "sparse":
        values = rng.standard_normal(n) * (rng.random(n) < 0.05)
    elif style == "wide":
        values = rng.standard_normal(n) * np.exp(rng.uniform(-20, 5, size=n))
    else:
        values = rng.standard_normal(n)
    return torch.from_numpy(values.reshape(shape)).to(dtype)


def _reference_topk(chunk_values: np.ndarray, keep: int) -> np.ndarray:
    """Largest |x| first, lowest index first among equals (a plain stable sort)."""
    order = np.lexsort((np.arange(chunk_values.size), -np.abs(chunk_values)))
    return np.sort(order[:keep])


def _check_against_reference(x: torch.Tensor, decoded: torch.Tensor, density: float, bits: int, chunk: int) -> None:
    src = x.detach().to(torch.float32).reshape(-1).numpy()
    dec = decoded.reshape(-1).numpy()
    assert dec.dtype == np.float32 and dec.shape == src.shape
    big_l = (1 << bits) - 1
    for start in range(0, src.size, chunk):
        part, got = src[start : start + chunk], dec[start : start + chunk]
        keep = min(part.size, max(1, round(density * part.size)))  # the same share for short chunks
        kept = _reference_topk(part, keep)
        dropped = np.setdiff1d(np.arange(part.size), kept)
        assert not got[dropped].any(), "a value outside the per-chunk top-k was sent"
        if bits == 32:
            assert np.array_equal(got[kept], part[kept])
            continue
        step = np.float32(np.abs(part[kept]).max()) / np.float32(big_l)
        err = np.abs(got[kept].astype(np.float64) - part[kept].astype(np.float64))
        # At most one step, plus the float32 rounding of the decoded product itself.
        bound = float(step) * (1 + 2**-20) + float(np.abs(part[kept]).max()) * 2**-23 + 1e-45
        assert (err <= bound).all(), (err.max(), step)
        if step > 0:
            # No zero level: every kept entry decodes to a nonzero odd multiple of step.
            assert np.all(got[kept] != 0)
            multiples = got[kept].astype(np.float64) / float(step)
            assert np.all(np.abs(multiples) <= big_l * (1 + 2**-20))


shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple),
    st.integers(0, 5000).map(lambda n: (n,)),
    st.tuples(st.integers(1, 40), st.integers(1, 130)),
)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    style=st.sampled_from(["normal", "ties", "sparse", "wide"]),
    density=st.one_of(st.sampled_from([0.01, 0.05, 0.5, 1.0]), st.floats(1e-4, 1.0)),
    bits=st.sampled_from([2, 4, 8, 32]),
    chunk=st.sampled_from([2, 8, 64, 512, 4096]),
)
def test_round_trip_keeps_exactly_the_top_k_within_one_step(
    seed: int, shape: tuple[int, ...], dtype: torch.dtype, style: str, density: float, bits: int, chunk: int
) -> None:
    x = _make_tensor(seed, shape, dtype, style)
    payload, recon = encode_update_and_reconstruct({"w": x}, density=density, bits=bits, chunk=chunk)
    update = read_update(payload)
    out = update.tensors["w"]
    assert out.shape == x.shape and out.dtype == torch.float32
    assert (update.density, update.bits, update.chunk, update.format_version) == (density, bits, chunk, FORMAT_VERSION)
    _check_against_reference(x, out, density, bits, chunk)
    assert torch.equal(_bits_of(recon["w"]), _bits_of(out)), "reconstruction differs from the decode"


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    style=st.sampled_from(["normal", "ties", "sparse", "wide"]),
)
def test_density_one_bits_32_is_exact(seed: int, shape: tuple[int, ...], dtype: torch.dtype, style: str) -> None:
    x = _make_tensor(seed, shape, dtype, style)
    if x.numel():
        x.view(-1)[0] = -0.0  # the sign of zero must survive too
    out = decode_update(encode_update({"x": x}, density=1.0, bits=32))["x"]
    assert torch.equal(_bits_of(out), _bits_of(x.to(torch.float32)))


def test_many_tensors_decode_sorted_with_shapes_and_metadata() -> None:
    torch.manual_seed(1)
    tensors = {"z.bias": torch.randn(3), "a.weight": torch.randn(5, 7, dtype=torch.float64),
               "m.scalar": torch.tensor(2.5), "e.empty": torch.zeros(0, 4), "b.half": torch.randn(9).half()}
    meta = {"round": 3, "base": b"\x01" * 32, "loss": 1.25, "tags": ["x", None, True], "nested": {"k": [1, 2]}}
    update = read_update(encode_update(tensors, density=0.5, bits=4, chunk=8, metadata=meta))
    assert list(update.tensors) == sorted(tensors)
    assert {k: tuple(v.shape) for k, v in update.tensors.items()} == {k: tuple(v.shape) for k, v in tensors.items()}
    assert update.metadata == meta
    assert update.tensors["e.empty"].numel() == 0


def test_ties_keep_the_lowest_indices() -> None:
    x = torch.ones(4096)
    x[1::2] = -1.0
    x[3000] = 2.0  # one clear winner, then 40 of 4095 equal magnitudes
    out = decode_update(encode_update({"x": x}, density=0.01, bits=8))["x"]
    assert out.nonzero().reshape(-1).tolist() == list(range(40)) + [3000]


def test_two_bit_levels_are_plus_minus_a_third_and_a() -> None:
    x = torch.tensor([3.0, -3.0, 1.0, -1.0, 0.9, 2.1, -0.1, 0.0])
    out = decode_update(encode_update({"x": x}, density=1.0, bits=2, chunk=8))["x"]
    assert out.tolist() == [3.0, -3.0, 1.0, -1.0, 1.0, 3.0, -1.0, 1.0]


def test_all_zero_chunk_decodes_to_positive_zero() -> None:
    out = decode_update(encode_update({"x": torch.zeros(100)}, density=0.1, bits=2, chunk=16))["x"]
    assert torch.equal(_bits_of(out), torch.zeros(100, dtype=torch.int32))


@pytest.mark.parametrize(("bits", "min_ratio"), [(8, 100.0), (2, 180.0)])
def test_compression_ratio_on_a_million_elements(bits: int, min_ratio: float) -> None:
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0))
    payload = encode_update({"layer.weight": x}, density=0.01, bits=bits)
    ratio = x.numel() * 4 / len(payload)
    assert ratio >= min_ratio, f"ratio {ratio:.1f} below {min_ratio}"


def test_same_input_same_bytes_whatever_insertion_order_or_layout() -> None:
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(64, 100, generator=g), torch.randn(333, generator=g)
    first = encode_update({"a": a, "b": b}, density=0.05, bits=2, metadata={"y": 1, "x": 2})
    again = encode_update({"b": b.clone(), "a": a.t().contiguous().t()}, density=0.05, bits=2,
                          metadata={"x": 2, "y": 1})
    assert first == again
    assert first != encode_update({"a": a, "b": b}, density=0.05, bits=4, metadata={"y": 1, "x": 2})


def test_non_finite_input_is_refused_by_default() -> None:
    x = torch.randn(10)
    x[4] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        encode_update({"x": x})
    big = torch.tensor([1e300], dtype=torch.float64)  # finite in float64, inf in float32
    with pytest.raises(ValueError, match="NaN or inf"):
        encode_update({"big": big})


def test_huge_but_finite_values_are_accepted() -> None:
    x = torch.full((1000,), 3e38)
    assert bool(torch.isinf(x.sum()))  # finite values whose sum overflows: still a valid update
    assert torch.equal(decode_update(encode_update({"x": x}, density=1.0, bits=32))["x"], x)
    assert bool(torch.isfinite(decode_update(encode_update({"x": x}, density=0.5, bits=8, chunk=64))["x"]).all())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"density": 0.0}, ValueError), ({"density": 1.5}, ValueError), ({"bits": 3}, ValueError),
        ({"bits": 16}, ValueError), ({"chunk": 100}, ValueError), ({"chunk": 1}, ValueError),
        ({"metadata": {1: "x"}}, ValueError), ({"metadata": {"x": object()}}, ValueError),
        ({"metadata": {"x": "y" * 70000}}, ValueError),
    ],
)
def test_bad_encode_arguments_raise(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_update({"x": torch.ones(3)}, **kwargs)


@pytest.mark.parametrize("tensors", [{"x": torch.ones(3, dtype=torch.int64)}, {"": torch.ones(1)},
                                     {3: torch.ones(1)}, {"x": [1.0]}, {"x": torch.ones([1] * 9)}])
def test_bad_tensors_raise(tensors: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode_update(tensors)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 16), count=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_packing_fast_paths_match_the_generic_bit_stream(width: int, count: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 1 << width, size=count)
    blob = pack_uints(values, width)
    if count:
        assert blob == _pack_generic(values.astype(np.uint32), width)
    assert len(blob) == (count * width + 7) // 8
    assert np.array_equal(unpack_uints(blob, count, width), values)


def test_twelve_bit_indices_are_little_endian() -> None:
    # 0xABC then 0x123: stream bits LSB first -> bytes 0xBC, 0x3A, 0x12.
    assert pack_uints(np.array([0xABC, 0x123]), 12) == bytes([0xBC, 0x3A, 0x12])
    assert pack_uints(np.array([1, 2, 3, 0]), 2) == bytes([0b00111001])


def _exact_tensor(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values from integer arithmetic only, so exact in float32 on every platform: many
    ties (integers up to 1001), zeros, and magnitudes spread over 2**-33 .. 2**3."""
    n = int(np.prod(shape)) if shape else 1
    i = np.arange(n, dtype=np.int64)
    v = ((i * 7919 + seed * 104729) % 2003 - 1001).astype(np.float64)
    v *= 2.0 ** ((i % 7) - 3 - 10 * (seed % 3))
    v[i % 11 == 0] = 0.0
    return torch.from_numpy(v.reshape(shape)).to(torch.float32)


def _pinned_model(seed: int) -> dict[str, torch.Tensor]:
    shapes = {"a.weight": (33, 129), "a.bias": (129,), "b.scalar": (), "c.empty": (0, 3), "d.odd": (4097,),
              "e.norm": (64,), "f.big": (3, 4096), "g.pair": (2,)}
    return {name: _exact_tensor(shape, seed + k) for k, (name, shape) in enumerate(shapes.items())}


# (density, bits, chunk, metadata) -> BLAKE2b-256 of the payload. A change here is a
# change of the wire format: peers of different versions would disagree on digests.
PINNED_DIGESTS = [
    ((0.01, 8, 4096, None),
     "0e18e6dd2ee6e4737276c99448a4c2d61066e5b0156e4846d163ebe61b2f3e68"),
    ((0.05, 2, 64, {"round": 7}),
     "d2fdd39f563e13dbb1cda13769928c6dcca57caf9e52308ef8eca67d9140f2ee"),
    ((0.3, 4, 16, None),
     "dde20d664253ce5291e38fce45dab02001aa646e56ec6a071759235eeb6e0f47"),
    ((1.0, 32, 4096, None),
     "3c0718d5570dc0a6bea5b66972401d1bc75a329cd5a3dd542aaca0f9f2de002b"),
    ((0.02, 8, 256, {"base": b"\x01" * 32, "loss": 1.25}),
     "90c809cbe942a419edb577ff215cd10830fbb58d63503b6ff218b85587c53054"),
]


@pytest.mark.parametrize(("settings", "digest"), PINNED_DIGESTS)
def test_payload_bytes_are_pinned(settings: tuple, digest: str) -> None:
    density, bits, chunk, meta = settings
    tensors = _pinned_model(seed=bits)
    payload, recon = encode_update_and_reconstruct(tensors, density=density, bits=bits, chunk=chunk, metadata=meta)
    assert update_digest(payload).hex() == digest
    decoded = decode_update(payload)
    assert all(torch.equal(_bits_of(decoded[n]), _bits_of(recon[n])) for n in tensors)


def test_batching_does_not_change_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors are coded in batches of about BATCH_ELEMENTS; any batching gives the same bytes."""
    tensors = {f"t{i}": _exact_tensor(shape, i) for i, shape in enumerate([(300,), (5, 40), (), (0,), (1000,), (7,)])}
    expected, expected_recon = encode_update_and_reconstruct(tensors, density=0.1, bits=4, chunk=64)
    for batch_elements in (1, 250, 1200):
        monkeypatch.setattr(codec, "BATCH_ELEMENTS", batch_elements)
        payload, recon = encode_update_and_reconstruct(tensors, density=0.1, bits=4, chunk=64)
        assert payload == expected
        decoded = decode_update(payload)
        for name in tensors:
            assert torch.equal(_bits_of(recon[name]), _bits_of(expected_recon[name]))
            assert torch.equal(_bits_of(decoded[name]), _bits_of(expected_recon[name]))
