"""Where every chunk of a batch of tensors goes, so the codec can work per chunk width.

Top-k, quantization and packing cost a fixed ~10-50 us per call whatever the size, and
a model has many tiny tensors (the demo model: 28 tensors, most of 64-256 elements).
So the codec does not work tensor by tensor: it groups the chunks of a batch of tensors
by width, all full chunks in one matrix and the tail chunks in one matrix per tail width
(the demo model has 4 widths), and runs each step once per matrix.

Two element orders matter. The encoder copies the tensors into one float32 buffer in
*class order* (:attr:`BatchPlan.pieces`), so each matrix is a plain view of it. Dense
results are in *tensor order*: the tensors end to end, each split off as a view.

The wire format stays per tensor: each tensor's blobs list its chunks in order (full
chunks, then the tail). A :class:`RowClass` says, for each row of one matrix, where the
chunk sits in the dense result and where its step, values and indices go in the batch's
streams: the tensors' blob contents laid end to end (:class:`Stream`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .layout import index_bits, tensor_layout
from .packing import align_unit

# Plans are cached: a peer codes the same model every round. Only small ones, so the
# cache stays small (a plan holds a few int64 per chunk): ~0.5 MB each at most.
CACHED_PLAN_CHUNKS = 1 << 14


@dataclass(frozen=True)
class Stream:
    """Per-tensor segments of one stream: ``count`` values at ``start`` (a multiple of the unit)."""

    starts: list[int]
    counts: list[int]
    total: int
    start_at: np.ndarray  # ``starts`` as int64, for vector arithmetic


def _stream(counts: np.ndarray, unit: int) -> Stream:
    padded = -(-counts // unit) * unit
    ends = np.cumsum(padded)
    starts = ends - padded
    return Stream(starts=starts.tolist(), counts=counts.tolist(), total=int(ends[-1]) if ends.size else 0,
                  start_at=_read_only(starts))


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # plans are cached and shared between calls
    return a


@dataclass(frozen=True)
class RowClass:
    """All chunks of one width in a batch: the rows of one matrix, in tensor order."""

    width: int
    keep: int
    start: int  # offset of the matrix in the class-order buffer
    base: np.ndarray  # int64 [rows]: offset of each chunk in the tensor-order result
    step_at: np.ndarray  # int64 [rows]: position of each chunk's step in the step stream
    val_at: np.ndarray  # int64 [rows]: position of each chunk's first value in the value stream
    idx_at: np.ndarray  # int64 [rows]: same in the index stream (unused when dense)

    @property
    def rows(self) -> int:
        return int(self.base.size)

    @property
    def dense(self) -> bool:
        return self.keep == self.width


@dataclass(frozen=True)
class BatchPlan:
    """The chunk matrices and blob streams of a batch of tensors with one chunk/bits setting."""

    bits: int
    chunk: int
    numel: int
    sizes: list[int]  # elements of each tensor; the tensor-order result holds them end to end
    offsets: list[int]  # where each tensor starts in it
    classes: tuple[RowClass, ...]
    pieces: list[tuple[int, int, int]]  # (tensor, first, end element) laid end to end: the class-order buffer
    steps: Stream
    vals: Stream
    idx: Stream


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - counts


def batch_plan(numels: tuple[int, ...], density: float, bits: int, chunk: int) -> BatchPlan:
    """Plan for tensors of these sizes, end to end, coded with these settings.

    Memory is linear in the number of chunks: a decoder checks the blob lengths of every
    tensor (:func:`.layout.tensor_layout`) before it asks for a plan.
    """
    if sum(numels) // chunk + len(numels) <= CACHED_PLAN_CHUNKS:
        return _cached_plan(numels, density, bits, chunk)
    return _plan(numels, density, bits, chunk)


@lru_cache(maxsize=16)
def _cached_plan(numels: tuple[int, ...], density: float, bits: int, chunk: int) -> BatchPlan:
    return _plan(numels, density, bits, chunk)


def _plan(numels: tuple[int, ...], density: float, bits: int, chunk: int) -> BatchPlan:
    # A few numpy calls per chunk width, none per tensor except to read the layouts.
    layouts = [tensor_layout(n, density=density, bits=bits, chunk=chunk) for n in numels]

    def column(field: str) -> np.ndarray:
        return np.array([getattr(layout, field) for layout in layouts], dtype=np.int64)

    numel, full, tail = column("numel"), column("full_rows"), column("tail")
    keep = layouts[0].keep if layouts else 1
    offsets = _exclusive_cumsum(numel)
    steps = _stream(column("chunks"), 1)
    vals = _stream(column("kept"), 1 if bits == 32 else align_unit(bits))
    idx = _stream(column("indices"), align_unit(index_bits(chunk)))
    classes: list[RowClass] = []
    pieces: list[tuple[int, int, int]] = []
    if full.any():
        tensor = np.repeat(np.arange(full.size), full)  # owner of each full chunk
        local = np.arange(tensor.size) - np.repeat(_exclusive_cumsum(full), full)  # its rank in the owner
        classes.append(_row_class(
            chunk, keep, 0, base=offsets[tensor] + local * chunk, step_at=steps.start_at[tensor] + local,
            val_at=vals.start_at[tensor] + local * keep, idx_at=idx.start_at[tensor] + local * keep))
        pieces += [(t, 0, rows * chunk) for t, rows in enumerate(full.tolist()) if rows]
    # Tails grouped by width with a stable sort: O(T log T) even if every width differs.
    owners = np.flatnonzero(tail)
    owners = owners[np.argsort(tail[owners], kind="stable")]
    full_indices = column("full_indices")
    start = int(full.sum()) * chunk
    for group in np.split(owners, np.flatnonzero(np.diff(tail[owners])) + 1) if owners.size else []:
        first = layouts[int(group[0])]
        classes.append(_row_class(
            first.tail, first.tail_keep, start, base=offsets[group] + full[group] * chunk,
            step_at=steps.start_at[group] + full[group], val_at=vals.start_at[group] + full[group] * keep,
            idx_at=idx.start_at[group] + full_indices[group]))
        start += group.size * first.tail
    pieces += [(t, layouts[t].full_rows * chunk, layouts[t].numel) for t in owners.tolist()]
    return BatchPlan(bits=bits, chunk=chunk, numel=int(numel.sum()), sizes=numel.tolist(), offsets=offsets.tolist(),
                     classes=tuple(classes), pieces=pieces, steps=steps, vals=vals, idx=idx)


def _row_class(width: int, keep: int, start: int, **rows: np.ndarray) -> RowClass:
    return RowClass(width=width, keep=keep, start=start, **{k: _read_only(v) for k, v in rows.items()})


def row_positions(starts: np.ndarray, count: int) -> np.ndarray:
    """``[start, start + count)`` for each start, flattened: where a matrix's rows go in a stream."""
    return (starts[:, None] + np.arange(count, dtype=np.int64)).reshape(-1)
