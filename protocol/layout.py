"""How one flattened tensor is cut into chunks, and how many bytes each blob takes.

The encoder and the decoder both derive everything from (element count, chunk,
density, bits) with this module, so the decoder can check every blob length exactly
*before* it allocates a tensor, and the two sides cannot disagree.

A tensor of ``n`` elements has ``n // chunk`` full chunks and, if ``n % chunk``, one
shorter tail chunk. Chunks of equal size keep equally many values, so each is a
:class:`ChunkGroup` (a matrix of ``rows x width`` with ``keep`` values kept per row).
"""

from __future__ import annotations

from dataclasses import dataclass

from .packing import packed_len

VALUE_BITS: tuple[int, ...] = (2, 4, 8, 32)
MIN_CHUNK = 2
MAX_CHUNK = 1 << 16


def keep_per_chunk(density: float, width: int) -> int:
    """Values kept in a chunk of ``width`` elements: ``min(width, max(1, round(density * width)))``.

    A short chunk (a small tensor, or a tensor's tail) keeps the same *share* as a full
    one, not the same count: a model has many small tensors (biases, norms), and keeping
    ``d * chunk`` values of each would make them most of the payload (the demo model sent
    73x less than fp32 at 1 %/8 bits that way, 150x this way). Error feedback carries what
    a short chunk leaves out to later rounds.

    ``round`` is Python's (half to even) on the float64 product; an implementation in
    another language must round the same way.
    """
    return min(width, max(1, round(density * width)))


def index_bits(chunk: int) -> int:
    """Bits per chunk-local index: log2(chunk) (chunk is a power of two)."""
    return chunk.bit_length() - 1


def valid_chunk(chunk: int) -> bool:
    return MIN_CHUNK <= chunk <= MAX_CHUNK and chunk & (chunk - 1) == 0


@dataclass(frozen=True)
class ChunkGroup:
    """``rows`` consecutive chunks of ``width`` elements starting at element ``offset``."""

    offset: int
    rows: int
    width: int
    keep: int

    @property
    def dense(self) -> bool:
        """Every element kept: the chunk stores values only, no indices."""
        return self.keep == self.width

    @property
    def kept(self) -> int:
        return self.rows * self.keep

    @property
    def indices(self) -> int:
        return 0 if self.dense else self.kept


@dataclass(frozen=True)
class TensorLayout:
    """Chunk groups of one tensor and the exact byte length of its three blobs."""

    numel: int
    chunk: int
    bits: int
    groups: tuple[ChunkGroup, ...]

    @property
    def chunks(self) -> int:
        return sum(g.rows for g in self.groups)

    @property
    def kept(self) -> int:
        return sum(g.kept for g in self.groups)

    @property
    def indices(self) -> int:
        return sum(g.indices for g in self.groups)

    @property
    def idx_bytes(self) -> int:
        return packed_len(self.indices, index_bits(self.chunk))

    @property
    def val_bytes(self) -> int:
        return 4 * self.kept if self.bits == 32 else packed_len(self.kept, self.bits)

    @property
    def step_bytes(self) -> int:
        # Raw float32 values need no scale; quantized chunks carry one float32 each.
        return 0 if self.bits == 32 else 4 * self.chunks


def tensor_layout(numel: int, *, density: float, bits: int, chunk: int) -> TensorLayout:
    """Layout for a tensor of ``numel`` elements; callers validate the arguments first."""
    full, tail = divmod(numel, chunk)
    groups: list[ChunkGroup] = []
    if full:
        groups.append(ChunkGroup(offset=0, rows=full, width=chunk, keep=keep_per_chunk(density, chunk)))
    if tail:
        groups.append(ChunkGroup(offset=full * chunk, rows=1, width=tail, keep=keep_per_chunk(density, tail)))
    return TensorLayout(numel=numel, chunk=chunk, bits=bits, groups=tuple(groups))
