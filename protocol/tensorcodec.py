"""A batch of tensors <-> each tensor's three blobs (indices, values, steps), both ways.

The work runs once per chunk width of the batch (:mod:`.plan`), not once per tensor.
The encoder and the decoder meet in :class:`ClassData` (per chunk width: kept column
indices, codes or raw values, steps) and both turn it into the dense buffer with the
same :func:`assemble`. That is why the encoder's reconstruction is bit-identical to what
every receiver decodes: there is one piece of code that builds the dense tensors.

Everything here is numpy (``torch`` stays at the API in :mod:`.codec`): most calls work
on small arrays, where numpy's ~1 us per call beats torch's ~3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import ProtocolError
from .layout import index_bits
from .packing import pack_segments, unpack_segments
from .plan import BatchPlan, Stream, row_positions
from .quant import dequantize, quantize
from .sparsify import select_topk


class TensorBlobs(NamedTuple):  # a NamedTuple: built twice per tensor per update, cheaply
    """The wire form of one tensor: packed indices, packed codes (or raw float32), steps."""

    idx: bytes
    val: bytes
    step: bytes


@dataclass(frozen=True)
class ClassData:
    """Kept entries of the chunks of one width, as ``[rows, keep]`` matrices.

    ``cols`` is None for dense chunks (every entry kept, no indices sent). ``values``
    holds integer codes when quantized, float32 values when ``bits == 32`` (then
    ``steps`` is None).
    """

    cols: np.ndarray | None
    values: np.ndarray
    steps: np.ndarray | None


# ----------------------------------------------------------------------------- encode


def encode_classes(buf: np.ndarray, plan: BatchPlan) -> list[ClassData]:
    """Select and quantize the kept entries of a batch's float32 buffer in class order."""
    out: list[ClassData] = []
    for c in plan.classes:
        rows = buf[c.start : c.start + c.rows * c.width].reshape(c.rows, c.width)
        cols = None if c.dense else select_topk(rows, c.keep)
        kept = rows if cols is None else np.take_along_axis(rows, cols, axis=1)
        if plan.bits == 32:
            out.append(ClassData(cols=cols, values=kept, steps=None))
        else:
            codes, steps = quantize(kept, plan.bits)
            out.append(ClassData(cols=cols, values=codes, steps=steps))
    return out


def _float_segments(stream: np.ndarray, s: Stream) -> list[bytes]:
    data = stream.astype("<f4").tobytes()
    return [data[4 * start : 4 * (start + count)] for start, count in zip(s.starts, s.counts)]


def to_blobs(classes: list[ClassData], plan: BatchPlan) -> list[TensorBlobs]:
    """Every tensor's blobs: scatter each matrix into the batch's streams, pack, cut per tensor."""
    raw = plan.bits == 32
    idx = np.zeros(plan.idx.total, dtype=np.uint32)
    vals = np.zeros(plan.vals.total, dtype=np.float32 if raw else np.uint8)
    steps = np.zeros(plan.steps.total, dtype=np.float32)
    for c, d in zip(plan.classes, classes):
        if d.cols is not None:
            idx[row_positions(c.idx_at, c.keep)] = d.cols.reshape(-1)
        vals[row_positions(c.val_at, c.keep)] = d.values.reshape(-1)
        if d.steps is not None:
            steps[c.step_at] = d.steps
    idx_blobs = pack_segments(idx, plan.idx.starts, plan.idx.counts, index_bits(plan.chunk))
    if raw:
        val_blobs = _float_segments(vals, plan.vals)
        step_blobs = [b""] * len(plan.sizes)
    else:
        val_blobs = pack_segments(vals, plan.vals.starts, plan.vals.counts, plan.bits)
        step_blobs = _float_segments(steps, plan.steps)
    return list(map(TensorBlobs, idx_blobs, val_blobs, step_blobs))


# ----------------------------------------------------------------------------- decode


# Canonical form: no subnormal floats. A peer whose CPU flushes subnormals to zero (FTZ/DAZ,
# common on accelerators and some ARM builds) would compute a different merge and checksum
# from the same payload than one that does not; the encoder flushes them to zero instead.
_SUBNORMAL = "{what} is subnormal (non-zero below float32's smallest normal); not canonical: flush it to 0"
_FLOAT32_TINY = np.float32(np.finfo(np.float32).tiny)


def _has_subnormal(values: np.ndarray) -> bool:
    magnitude = np.abs(values)
    return bool(((magnitude < _FLOAT32_TINY) & (magnitude > 0)).any())


def from_blobs(blobs: list[TensorBlobs], plan: BatchPlan) -> list[ClassData]:
    """Unpack and validate the blobs of a batch (their lengths already checked against the plan).

    Rejects set padding bits, indices that are not strictly increasing within a chunk
    or fall outside it, and non-finite or negative steps and raw values.
    """
    idx = unpack_segments([b.idx for b in blobs], plan.idx.counts, index_bits(plan.chunk))
    if plan.bits == 32:
        vals = np.frombuffer(b"".join(b.val for b in blobs), dtype="<f4").astype(np.float32)
        if not np.isfinite(vals).all():
            raise ProtocolError("raw values contain NaN or inf; an update must be finite")
        if _has_subnormal(vals):
            raise ProtocolError(_SUBNORMAL.format(what="a raw value"))
        steps = None
    else:
        vals = unpack_segments([b.val for b in blobs], plan.vals.counts, plan.bits)
        steps = np.frombuffer(b"".join(b.step for b in blobs), dtype="<f4").astype(np.float32)
        if not np.isfinite(steps).all() or np.signbit(steps).any():
            raise ProtocolError("a chunk step is NaN, inf or negative; steps must be finite and >= +0.0")
        if _has_subnormal(steps):
            raise ProtocolError(_SUBNORMAL.format(what="a chunk step"))
        # The largest level is L * step; a finite step near float32's max would decode to inf.
        with np.errstate(over="ignore"):
            top = steps * np.float32((1 << plan.bits) - 1)
        if not np.isfinite(top).all():
            raise ProtocolError("a chunk step is so large that its top level overflows float32; "
                                "an update must decode to finite values")
    out: list[ClassData] = []
    for c in plan.classes:
        cols = None
        if not c.dense:
            cols = idx[row_positions(c.idx_at, c.keep)].reshape(c.rows, c.keep)
            _check_cols(cols, c.width)
        values = vals[row_positions(c.val_at, c.keep)].reshape(c.rows, c.keep)
        out.append(ClassData(cols=cols, values=values, steps=None if steps is None else steps[c.step_at]))
    return out


def _check_cols(cols: np.ndarray, width: int) -> None:
    if cols.shape[1] > 1 and not (cols[:, 1:] > cols[:, :-1]).all():
        raise ProtocolError("indices within a chunk must be strictly increasing (sorted, no duplicates)")
    if cols[:, -1].max() >= width:
        raise ProtocolError(f"an index is outside its chunk of {width} elements")


# ----------------------------------------------------------------------------- both


def class_values(d: ClassData, bits: int) -> np.ndarray:
    """Decoded float32 values ``[rows, keep]`` of one chunk width."""
    if d.steps is None:
        return d.values
    return dequantize(d.values, d.steps, bits)


def assemble(classes: list[ClassData], plan: BatchPlan) -> np.ndarray:
    """The dense float32 tensors of the batch end to end: zeros except the kept entries
    (shared by encode and decode)."""
    out = np.zeros(plan.numel, dtype=np.float32)
    for c, d in zip(plan.classes, classes):
        cols = np.arange(c.width, dtype=np.int64) if d.cols is None else d.cols
        out[(c.base[:, None] + cols).reshape(-1)] = class_values(d, plan.bits).reshape(-1)
    return out
