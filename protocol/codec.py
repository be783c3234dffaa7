"""The update codec: named float tensors <-> one msgpack document of sparse quantized blobs.

Wire format 1 is one msgpack map with keys in sorted order::

    {"bits": 2|4|8|32, "chunk": power of two, "density": float64, "format": 1,
     "meta": {...}, "tensors": [{"i": bin, "n": str, "q": bin, "s": [int, ...],
                                 "v": bin}, ...]}   # sorted by name

Per tensor: ``n`` name, ``s`` shape, ``i`` packed indices, ``v`` packed values, ``q``
per-chunk float32 quantization steps. One-letter keys because the framing of each tensor
is paid in every payload: with the demo model's 28 tensors the long names cost ~390 B of
a ~5 KB update.

Each tensor is flattened (row-major) and cut into chunks of ``chunk`` elements; each
chunk keeps its top ``min(n, max(1, round(density * n)))`` entries by magnitude
(:mod:`.sparsify`), with indices packed at log2(chunk) bits (:mod:`.packing`) and
values quantized per chunk (:mod:`.quant`). Blob sizes follow from the shape
(:mod:`.layout`), so the decoder checks them exactly before allocating anything.

The document must be canonical: re-packing what was decoded (maps with sorted keys,
shortest integers, float64 floats) must give the received bytes. So one update has one
byte form and one digest; a peer cannot replay someone else's update under a new digest
by re-encoding the msgpack differently.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import torch

from .errors import ProtocolError
from .layout import VALUE_BITS, tensor_layout, valid_chunk
from .plan import BatchPlan, batch_plan
from .tensorcodec import TensorBlobs, assemble, encode_classes, from_blobs, to_blobs

FORMAT_VERSION = 1
DEFAULT_MAX_ELEMENTS = 1 << 28  # 1 GiB of decoded float32
MAX_NDIM = 8
MAX_NAME_CHARS = 1024
MAX_TENSORS = 1 << 16
MAX_META_BYTES = 1 << 16
MAX_META_DEPTH = 16
# Tensors are coded in batches of about this many elements (one big tensor alone): the
# per-call cost of top-k and packing is paid per batch instead of per tensor, and a
# batch's float32 copy stays small. Decoded tensors of one batch share its buffer.
BATCH_ELEMENTS = 1 << 20
# Map sizes: the top level has 6 keys, a tensor entry 5; metadata maps share the
# metadata byte budget, so a map cannot need more entries than that budget has bytes / 2.
MAX_MAP_LEN = MAX_META_BYTES // 2

# Keys in canonical (sorted) order; msgpack keeps the order of a map as received.
_TOP_ORDER = ("bits", "chunk", "density", "format", "meta", "tensors")
_TENSOR_ORDER = ("i", "n", "q", "s", "v")
_TOP_KEYS = frozenset(_TOP_ORDER)
_TENSOR_KEYS = frozenset(_TENSOR_ORDER)
_NOT_CANONICAL = ("payload is not in canonical form (key order, number widths or duplicate keys differ from what "
                  "encode_update writes); re-encode it with encode_update")
_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # what msgpack can carry


@dataclass(frozen=True)
class DecodedUpdate:
    """Everything a payload carries: dense float32 tensors (sorted by name) and settings."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    density: float
    bits: int
    chunk: int
    format_version: int


# ----------------------------------------------------------------------------- encode


def encode_update(
    tensors: Mapping[str, torch.Tensor],
    *,
    density: float = 0.01,
    bits: int = 8,
    chunk: int = 4096,
    metadata: Mapping[str, Any] | None = None,
    check_finite: bool = True,
) -> bytes:
    """Encode named float tensors as one payload (see the module docstring for the format).

    Raises ValueError/TypeError on bad arguments, and ValueError on NaN/inf input when
    ``check_finite`` (``check_finite=False`` exists to build hostile payloads for fault
    injection: the non-finite values are kept and every decoder rejects the payload).
    Same input, same bytes.
    """
    payload, _ = _encode(tensors, density, bits, chunk, metadata, check_finite, reconstruct=False)
    return payload


def encode_update_and_reconstruct(
    tensors: Mapping[str, torch.Tensor],
    *,
    density: float = 0.01,
    bits: int = 8,
    chunk: int = 4096,
    metadata: Mapping[str, Any] | None = None,
    check_finite: bool = True,
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """:func:`encode_update` plus what every receiver will decode, bit for bit.

    The peer subtracts the reconstruction from its update to get the error-feedback
    residual without decoding its own payload.
    """
    payload, recon = _encode(tensors, density, bits, chunk, metadata, check_finite, reconstruct=True)
    assert recon is not None
    return payload, recon


def _encode(
    tensors: Mapping[str, torch.Tensor],
    density: float,
    bits: int,
    chunk: int,
    metadata: Mapping[str, Any] | None,
    check_finite: bool,
    *,
    reconstruct: bool,
) -> tuple[bytes, dict[str, torch.Tensor] | None]:
    density = _check_settings(density, bits, chunk)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> tensor, got {type(tensors).__name__}")
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"an update holds at most {MAX_TENSORS} tensors, got {len(tensors)}; merge small ones")
    for name in tensors:
        _check_name_arg(name)
    meta = _check_meta_arg(metadata)
    names = sorted(tensors)
    for name in names:
        _check_tensor_arg(name, tensors[name])
    numels = [tensors[name].numel() for name in names]
    entries: list[dict[str, Any]] = []
    recon: dict[str, torch.Tensor] | None = {} if reconstruct else None
    for batch in _batches(numels):
        batch_names = names[batch]
        plan = batch_plan(tuple(numels[batch]), density, bits, chunk)
        buf = _float32_buffer([tensors[name] for name in batch_names], plan, check_finite, batch_names)
        classes = encode_classes(buf.numpy(), plan)
        for name, blobs in zip(batch_names, to_blobs(classes, plan)):
            entries.append({"i": blobs.idx, "n": name, "q": blobs.step, "s": list(tensors[name].shape),
                            "v": blobs.val})
        if recon is not None:
            shapes = [tensors[name].shape for name in batch_names]
            recon.update(zip(batch_names, _split(assemble(classes, plan), plan, shapes)))
    # Built in canonical order already (sorted keys, lists); only the caller's metadata
    # needs sorting.
    doc = {"bits": bits, "chunk": chunk, "density": density, "format": FORMAT_VERSION, "meta": _canonical(meta),
           "tensors": entries}
    return msgpack.packb(doc, use_bin_type=True), recon


def _batches(numels: Sequence[int]) -> Iterator[slice]:
    """Consecutive runs of tensors of about BATCH_ELEMENTS elements in all."""
    start = total = 0
    for i, numel in enumerate(numels):
        if total and total + numel > BATCH_ELEMENTS:
            yield slice(start, i)
            start, total = i, 0
        total += numel
    if start < len(numels):
        yield slice(start, len(numels))


def _split(dense: np.ndarray, plan: BatchPlan, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Each tensor of a batch as a view of its dense buffer (numpy slicing: half torch's cost)."""
    return [torch.from_numpy(dense[at : at + size].reshape(shape))
            for at, size, shape in zip(plan.offsets, plan.sizes, shapes)]


def _check_settings(density: float, bits: int, chunk: int) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(f"density must be a float in (0, 1], got {type(density).__name__}")
    density = float(density)
    if not (0.0 < density <= 1.0):
        raise ValueError(f"density must be in (0, 1], got {density}")
    if isinstance(bits, bool) or bits not in VALUE_BITS:
        raise ValueError(f"bits must be one of {VALUE_BITS}, got {bits!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not valid_chunk(chunk):
        raise ValueError(f"chunk must be a power of two in [2, 65536], got {chunk!r}")
    return density


def _check_name_arg(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__}: {name!r}")
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise ValueError(f"tensor names must have 1..{MAX_NAME_CHARS} characters, got {len(name)}")


def _check_tensor_arg(name: str, tensor: Any) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _INPUT_DTYPES:
        raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}; the codec takes float16, bfloat16, "
                        "float32 or float64")
    if tensor.dim() > MAX_NDIM:
        raise ValueError(f"tensor {name!r} has {tensor.dim()} dims; at most {MAX_NDIM} (reshape it)")


_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def _float32_buffer(tensors: list[torch.Tensor], plan: BatchPlan, check_finite: bool,
                    names: list[str]) -> torch.Tensor:
    """The tensors' elements cast to float32, in the plan's class order, in one new buffer."""
    flats = [t.flatten() if t.is_cpu else t.cpu().flatten() for t in tensors]  # flatten: free on 1-d tensors
    parts = [flats[t] if first == 0 and end == plan.sizes[t] else flats[t][first:end] for t, first, end in plan.pieces]
    buf = torch.empty(plan.numel, dtype=torch.float32)
    if parts:  # none when every tensor is empty
        with torch.no_grad():  # cat(out=) refuses inputs that require grad otherwise
            torch.cat(parts, out=buf)  # casts each part once, as .to(torch.float32) would
    # Subnormals are not canonical (the decoder refuses them): they become zeros here, in the
    # dense values as in the chunk scales, so every encoded update decodes on every peer.
    magnitude = buf.abs()
    buf.masked_fill_((magnitude < _FLOAT32_TINY) & (magnitude > 0), 0.0)
    # Checked after the float32 cast: a finite float64 beyond float32's range becomes inf.
    if check_finite and not _all_finite(buf):
        name = next(name for name, flat in zip(names, flats) if not _all_finite(flat.to(torch.float32)))
        raise ValueError(f"tensor {name!r} contains NaN or inf (as float32); refusing to encode a non-finite "
                         "update (fix the training step; check_finite=False is for fault injection only)")
    return buf


def _all_finite(flat: torch.Tensor) -> bool:
    # A finite sum proves every element finite (NaN/inf propagate) without allocating
    # a mask; only a sum that overflowed needs the exact elementwise check.
    return bool(torch.isfinite(flat.sum())) or bool(torch.isfinite(flat).all())


def _check_meta_arg(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping with str keys, got {type(metadata).__name__}")
    meta = dict(metadata)
    problem = _plain_problem(meta, 0)
    if problem:
        raise ValueError(f"metadata is not plain msgpack data: {problem}")
    size = len(_pack(meta))
    if size > MAX_META_BYTES:
        raise ValueError(f"metadata packs to {size} bytes; at most {MAX_META_BYTES} (send big data as tensors)")
    return meta


# ----------------------------------------------------------------------------- decode


def decode_update(payload: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> dict[str, torch.Tensor]:
    """Dense float32 tensors of a payload, names in sorted order.

    Raises :class:`ProtocolError` (and nothing else) for any payload that is not a
    valid, canonical, finite format-1 update within the limits, before allocating more
    than the declared shapes (at most ``max_elements`` elements in all).

    Consecutive small tensors (up to ``BATCH_ELEMENTS`` elements in all) are views of
    one buffer: independent values, but ``torch.save`` of one of them alone writes the
    whole buffer (``.clone()`` it first).
    """
    return read_update(payload, max_elements=max_elements).tensors


def read_update(payload: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> DecodedUpdate:
    """Like :func:`decode_update`, with the metadata and codec settings of the payload."""
    try:
        return _read(payload, max_elements)
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
        # Backstop at the trust boundary: every explicit check above raises ProtocolError
        # with a precise message; anything a check missed still reaches the caller as a
        # rejection of this payload, never as a crash of the peer. RuntimeError is not
        # caught: torch raises it for a local failure (out of memory among them), which
        # must stop this peer, never become a verdict against the sender.
        raise ProtocolError(f"malformed update payload ({type(e).__name__}: {e})") from e


def _read(payload: bytes, max_elements: int) -> DecodedUpdate:
    doc = _unpack(payload, max_elements)
    density, bits, chunk = _check_header(doc)
    meta = _check_meta(doc["meta"])
    names, shapes, numels, blobs, sorted_keys = _check_entries(doc["tensors"], density, bits, chunk, max_elements)
    # Canonical: keys in sorted order (checked here: msgpack keeps the received order, so
    # re-packing would not notice), then re-packing gives the same bytes.
    if not sorted_keys or tuple(doc) != _TOP_ORDER:
        raise ProtocolError(_NOT_CANONICAL)
    doc["meta"] = _canonical(meta)
    if msgpack.packb(doc, use_bin_type=True) != bytes(payload):
        raise ProtocolError(_NOT_CANONICAL)
    tensors: dict[str, torch.Tensor] = {}
    for batch in _batches(numels):
        plan = batch_plan(tuple(numels[batch]), density, bits, chunk)
        dense = assemble(from_blobs(blobs[batch], plan), plan)
        tensors.update(zip(names[batch], _split(dense, plan, shapes[batch])))
    return DecodedUpdate(tensors=tensors, metadata=meta, density=density, bits=bits, chunk=chunk,
                         format_version=FORMAT_VERSION)


def max_payload_bytes(max_elements: int) -> int:
    """The most bytes a valid payload of at most ``max_elements`` elements can take."""
    # Worst case per element is a sparse bits=32 entry: a 16-bit index and 4 value
    # bytes, plus per-chunk steps; 8 bytes per element bounds it, plus framing.
    return 8 * max_elements + MAX_TENSORS * (MAX_NAME_CHARS * 4 + 128) + MAX_META_BYTES + 1024


def _unpack(payload: bytes, max_elements: int) -> dict[str, Any]:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"payload must be bytes, got {type(payload).__name__}")
    if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 0:
        raise ProtocolError(f"max_elements must be an int >= 0, got {max_elements!r}")
    if len(payload) > max_payload_bytes(max_elements):
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the limit for {max_elements} elements")
    try:
        doc = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_META_BYTES, max_bin_len=len(payload), max_array_len=MAX_TENSORS,
            max_map_len=MAX_MAP_LEN, max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError) as e:  # msgpack's errors are ValueErrors
        raise ProtocolError(f"payload is not a valid msgpack document within limits: {e}") from e
    if not isinstance(doc, dict):
        raise ProtocolError(f"payload must be a msgpack map, got {type(doc).__name__}")
    return doc


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass but never a valid count here


def _check_header(doc: dict[str, Any]) -> tuple[float, int, int]:
    version = doc.get("format")
    if version != FORMAT_VERSION or not _is_int(version):
        raise ProtocolError(f"unsupported update format {version!r}; this peer reads format {FORMAT_VERSION} "
                            "(peers of one swarm must run compatible swarmtrain versions)")
    if set(doc) != _TOP_KEYS:
        raise ProtocolError(f"update keys must be exactly {sorted(_TOP_KEYS)}, got {sorted(map(str, doc))}")
    density, bits, chunk = doc["density"], doc["bits"], doc["chunk"]
    if type(density) is not float or not math.isfinite(density) or not 0.0 < density <= 1.0:
        raise ProtocolError(f"density must be a float in (0, 1], got {density!r}")
    if not _is_int(bits) or bits not in VALUE_BITS:
        raise ProtocolError(f"bits must be one of {VALUE_BITS}, got {bits!r}")
    if not _is_int(chunk) or not valid_chunk(chunk):
        raise ProtocolError(f"chunk must be a power of two in [2, 65536], got {chunk!r}")
    return density, bits, chunk


def _check_meta(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ProtocolError(f"meta must be a map, got {type(meta).__name__}")
    problem = _plain_problem(meta, 0)
    if problem:
        raise ProtocolError(f"meta is not plain data: {problem}")
    if len(_pack(meta)) > MAX_META_BYTES:
        raise ProtocolError(f"meta exceeds {MAX_META_BYTES} bytes")
    return meta


_Entries = tuple[list[str], list[list[int]], list[int], list[TensorBlobs], bool]


def _check_entries(entries: Any, density: float, bits: int, chunk: int, max_elements: int) -> _Entries:
    """Validate every tensor entry's structure and blob lengths; allocate nothing big.

    Returns names, shapes, element counts and blobs, and whether every entry's keys
    were in sorted order.
    """
    if not isinstance(entries, list):
        raise ProtocolError(f"tensors must be a list, got {type(entries).__name__}")
    names: list[str] = []
    shapes: list[list[int]] = []
    numels: list[int] = []
    blobs: list[TensorBlobs] = []
    sorted_keys = True
    total = 0
    previous: str | None = None
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ProtocolError(f"tensor entry {i} must be a map with keys {sorted(_TENSOR_KEYS)}")
        if tuple(entry) != _TENSOR_ORDER:
            if set(entry) != _TENSOR_KEYS:
                raise ProtocolError(f"tensor entry {i} must be a map with keys {sorted(_TENSOR_KEYS)}")
            sorted_keys = False
        name, shape = entry["n"], entry["s"]
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise ProtocolError(f"tensor entry {i}: name must be a str of 1..{MAX_NAME_CHARS} characters")
        if previous is not None and name <= previous:
            raise ProtocolError(f"tensor names must be unique and sorted; {name!r} follows {previous!r}")
        previous = name
        numel = _check_shape(name, shape, max_elements)
        total += numel
        if total > max_elements:
            raise ProtocolError(f"declared tensors exceed {max_elements} elements in all (at {name!r}); "
                                "raise max_elements only if you expect a model this large")
        idx, val, step = entry["i"], entry["v"], entry["q"]
        if type(idx) is not bytes or type(val) is not bytes or type(step) is not bytes:
            raise ProtocolError(f"tensor {name!r}: idx (i), val (v) and step (q) must be binary")
        layout = tensor_layout(numel, density=density, bits=bits, chunk=chunk)
        _check_len(name, "idx", idx, layout.idx_bytes)
        _check_len(name, "val", val, layout.val_bytes)
        _check_len(name, "step", step, layout.step_bytes)
        names.append(name)
        shapes.append(shape)
        numels.append(numel)
        blobs.append(TensorBlobs(idx, val, step))
    return names, shapes, numels, blobs, sorted_keys


def _check_len(name: str, what: str, blob: bytes, expected: int) -> None:
    if len(blob) != expected:
        raise ProtocolError(f"tensor {name!r}: {what} blob has {len(blob)} bytes, expected exactly {expected} for "
                            "the declared shape")


def _check_shape(name: str, shape: Any, max_elements: int) -> int:
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise ProtocolError(f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} dims")
    numel = 1
    for dim in shape:
        # Each dim is capped on its own too: with a zero dim elsewhere the product stays
        # small, but torch cannot even describe a dim beyond int64.
        if not _is_int(dim) or not 0 <= dim <= max_elements:
            raise ProtocolError(f"tensor {name!r}: dims must be ints in [0, {max_elements}], got {shape!r}")
        numel *= dim
        if numel > max_elements:
            raise ProtocolError(f"tensor {name!r}: shape {shape!r} exceeds {max_elements} elements")
    return numel


# ----------------------------------------------------------------------------- msgpack


def _plain_problem(value: Any, depth: int) -> str | None:
    """Why ``value`` is not plain msgpack data (None if it is): str-keyed maps, lists,
    None, bool, int (64-bit), float, str, bytes; nested at most MAX_META_DEPTH deep."""
    if depth > MAX_META_DEPTH:
        return f"nested deeper than {MAX_META_DEPTH}"
    if value is None or isinstance(value, (bool, float, str, bytes)):
        return None
    if isinstance(value, int):
        return None if _INT_RANGE[0] <= value <= _INT_RANGE[1] else f"integer {value} out of 64-bit range"
    if isinstance(value, (list, tuple)):
        for item in value:
            problem = _plain_problem(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"map key {key!r} is not a str"
            problem = _plain_problem(item, depth + 1)
            if problem:
                return problem
        return None
    return f"unsupported type {type(value).__name__}"


def _canonical(value: Any) -> Any:
    """Maps with sorted keys, tuples as lists: the one form both sides pack."""
    if isinstance(value, dict):
        return {key: _canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def _pack(doc: Any) -> bytes:
    return msgpack.packb(_canonical(doc), use_bin_type=True)
