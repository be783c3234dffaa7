"""How one flattened tensor is cut into chunks, and how many bytes each blob takes.

The encoder and the decoder both derive everything from (element count, chunk,
density, bits) with this module, so the decoder can check every blob length exactly
*before* it allocates a tensor, and the two sides cannot disagree.

A tensor of ``n`` elements has ``n // chunk`` full chunks and, if ``n % chunk``, one
shorter tail chunk. Its blobs list the chunks in that order: the full chunks, then the
tail. How chunks of many tensors are processed together is :mod:`.plan`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

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
class TensorLayout:
    """Chunks of one tensor and the exact byte length of its three blobs.

    A chunk that keeps all its elements (``keep == width``) is dense: it sends values
    only, no indices.
    """

    numel: int
    chunk: int
    bits: int
    full_rows: int  # chunks of ``chunk`` elements
    keep: int  # values kept per full chunk
    tail: int  # elements of the shorter last chunk; 0 if there is none
    tail_keep: int  # values kept in the tail chunk; 0 if there is none

    @cached_property
    def chunks(self) -> int:
        return self.full_rows + (self.tail > 0)

    @cached_property
    def kept(self) -> int:
        return self.full_rows * self.keep + self.tail_keep

    @cached_property
    def full_indices(self) -> int:
        """Indices sent for the full chunks (none when they are dense)."""
        return 0 if self.keep == self.chunk else self.full_rows * self.keep

    @cached_property
    def indices(self) -> int:
        return self.full_indices + (0 if self.tail_keep == self.tail else self.tail_keep)

    @cached_property
    def idx_bytes(self) -> int:
        return packed_len(self.indices, index_bits(self.chunk))

    @cached_property
    def val_bytes(self) -> int:
        return 4 * self.kept if self.bits == 32 else packed_len(self.kept, self.bits)

    @cached_property
    def step_bytes(self) -> int:
        # Raw float32 values need no scale; quantized chunks carry one float32 each.
        return 0 if self.bits == 32 else 4 * self.chunks


# Cached because a model repeats a few sizes (every layer's bias, every block's matrix)
# and a peer encodes and decodes the same model every round.
@lru_cache(maxsize=4096)
def tensor_layout(numel: int, *, density: float, bits: int, chunk: int) -> TensorLayout:
    """Layout for a tensor of ``numel`` elements; callers validate the arguments first."""
    full, tail = divmod(numel, chunk)
    return TensorLayout(numel=numel, chunk=chunk, bits=bits, full_rows=full, keep=keep_per_chunk(density, chunk),
                        tail=tail, tail_keep=keep_per_chunk(density, tail) if tail else 0)
