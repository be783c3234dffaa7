"""One tensor <-> its three blobs (indices, values, steps), in both directions.

The encoder and the decoder meet in :class:`GroupData` (per chunk group: kept column
indices, codes or raw values, steps) and both turn it into a dense tensor with the same
:func:`assemble`. That is why the encoder's reconstruction is bit-identical to what
every receiver decodes: there is one piece of code that builds the dense tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ProtocolError
from .layout import ChunkGroup, TensorLayout, index_bits
from .packing import pack_uints, unpack_uints
from .quant import dequantize, quantize
from .sparsify import select_topk


@dataclass(frozen=True)
class TensorBlobs:
    """The wire form of one tensor: packed indices, packed codes (or raw float32), steps."""

    idx: bytes
    val: bytes
    step: bytes


@dataclass(frozen=True)
class GroupData:
    """Kept entries of one chunk group, as ``[rows, keep]`` matrices.

    ``cols`` is None for dense groups (every entry kept, no indices sent). ``values``
    holds integer codes when quantized, float32 values when ``bits == 32`` (then
    ``steps`` is None).
    """

    cols: torch.Tensor | None
    values: torch.Tensor
    steps: torch.Tensor | None


def encode_groups(flat: torch.Tensor, layout: TensorLayout) -> list[GroupData]:
    """Select and quantize the kept entries of a contiguous float32 vector."""
    out: list[GroupData] = []
    for g in layout.groups:
        rows = flat[g.offset : g.offset + g.rows * g.width].view(g.rows, g.width)
        cols = None if g.dense else select_topk(rows, g.keep)
        kept = rows if cols is None else rows.gather(1, cols)
        if layout.bits == 32:
            out.append(GroupData(cols=cols, values=kept.contiguous(), steps=None))
        else:
            codes, steps = quantize(kept, layout.bits)
            out.append(GroupData(cols=cols, values=codes, steps=steps))
    return out


def to_blobs(groups: list[GroupData], layout: TensorLayout) -> TensorBlobs:
    """Pack group data into the three blobs, in chunk order."""
    cols = [d.cols.reshape(-1) for d in groups if d.cols is not None]
    idx = pack_uints(torch.cat(cols).numpy(), index_bits(layout.chunk)) if cols else b""
    if not groups:
        return TensorBlobs(idx=b"", val=b"", step=b"")
    values = torch.cat([d.values.reshape(-1) for d in groups]).numpy()
    if layout.bits == 32:
        return TensorBlobs(idx=idx, val=values.astype("<f4").tobytes(), step=b"")
    steps = torch.cat([d.steps for d in groups if d.steps is not None]).numpy()
    return TensorBlobs(idx=idx, val=pack_uints(values, layout.bits), step=steps.astype("<f4").tobytes())


def _check_len(what: str, blob: bytes, expected: int) -> None:
    if len(blob) != expected:
        raise ProtocolError(f"{what} blob has {len(blob)} bytes, expected exactly {expected} for the declared shape")


def check_blob_lengths(blobs: TensorBlobs, layout: TensorLayout) -> None:
    """Exact byte lengths implied by the layout; cheap, so run it before allocating."""
    _check_len("idx", blobs.idx, layout.idx_bytes)
    _check_len("val", blobs.val, layout.val_bytes)
    _check_len("step", blobs.step, layout.step_bytes)


def from_blobs(blobs: TensorBlobs, layout: TensorLayout) -> list[GroupData]:
    """Unpack and validate the blobs of one tensor (lengths first, then contents).

    Rejects indices that are not strictly increasing within a chunk or fall outside
    it, and non-finite or negative steps and raw values.
    """
    check_blob_lengths(blobs, layout)
    all_cols = unpack_uints(blobs.idx, layout.indices, index_bits(layout.chunk))
    if layout.bits == 32:
        values = np.frombuffer(blobs.val, dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all():
            raise ProtocolError("raw values contain NaN or inf; an update must be finite")
        steps = None
    else:
        values = unpack_uints(blobs.val, layout.kept, layout.bits)
        steps = np.frombuffer(blobs.step, dtype="<f4").astype(np.float32)
        if not np.isfinite(steps).all() or np.signbit(steps).any():
            raise ProtocolError("a chunk step is NaN, inf or negative; steps must be finite and >= +0.0")
    out: list[GroupData] = []
    col_at = val_at = step_at = 0
    for g in layout.groups:
        cols = None
        if not g.dense:
            cols = all_cols[col_at : col_at + g.kept].reshape(g.rows, g.keep)
            col_at += g.kept
            _check_cols(cols, g)
        vals = torch.from_numpy(values[val_at : val_at + g.kept].reshape(g.rows, g.keep))
        val_at += g.kept
        group_steps = None
        if steps is not None:
            group_steps = torch.from_numpy(steps[step_at : step_at + g.rows])
            step_at += g.rows
        out.append(GroupData(cols=None if cols is None else torch.from_numpy(cols), values=vals, steps=group_steps))
    return out


def _check_cols(cols: np.ndarray, g: ChunkGroup) -> None:
    if g.keep > 1 and not (cols[:, 1:] > cols[:, :-1]).all():
        raise ProtocolError("indices within a chunk must be strictly increasing (sorted, no duplicates)")
    if cols[:, -1].max() >= g.width:
        raise ProtocolError(f"an index is outside its chunk of {g.width} elements")


def group_values(d: GroupData, bits: int) -> torch.Tensor:
    """Decoded float32 values ``[rows, keep]`` of one group."""
    if d.steps is None:
        return d.values
    return dequantize(d.values, d.steps, bits)


def assemble(groups: list[GroupData], layout: TensorLayout) -> torch.Tensor:
    """The dense float32 vector: zeros except the kept entries (shared by encode and decode)."""
    out = torch.zeros(layout.numel, dtype=torch.float32)
    for g, d in zip(layout.groups, groups):
        vals = group_values(d, layout.bits).reshape(-1)
        if d.cols is None:
            out[g.offset : g.offset + g.rows * g.width] = vals
        else:
            starts = torch.arange(g.rows, dtype=torch.int64)[:, None] * g.width + g.offset
            out[(starts + d.cols).reshape(-1)] = vals
    return out
