"""Fixed-width unsigned integers packed into a little-endian bit stream.

Value ``i`` of width ``w`` occupies stream bits ``[i*w, (i+1)*w)``, least significant
bit first; stream bit ``p`` is bit ``p % 8`` of byte ``p // 8``. The stream is padded
with zero bits to a whole byte. The codec uses this for chunk-local indices (12 bits
for 4096-element chunks) and for 2/4/8-bit quantization codes, so one routine defines
the bit layout of both.

Fast paths exist for the widths the codec uses most (divisors of 8, 12 and 16); a
generic bit-matrix path handles any other width up to 16 and is the reference the
fast paths are tested against.

Many tensors' streams are packed and unpacked in one call (:func:`pack_segments`,
:func:`unpack_segments`): each stream is padded with zero values to a whole number of
bytes, so the streams can be laid end to end in one array and their bytes cut apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import ProtocolError

MAX_WIDTH = 16


def packed_len(count: int, width: int) -> int:
    """Bytes needed for ``count`` values of ``width`` bits (Python ints: no overflow)."""
    return (count * width + 7) // 8


def _check_width(width: int) -> None:
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be in [1, {MAX_WIDTH}], got {width}")


def pack_uints(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers ``< 2**width`` into the bit stream described above.

    The caller guarantees the range (the codec produces codes and indices that fit by
    construction); values are masked anyway so a bug cannot spill into a neighbour.
    """
    _check_width(width)
    flat = np.asarray(values).reshape(-1).astype(np.uint32, copy=False) & np.uint32((1 << width) - 1)
    count = flat.size
    if count == 0:
        return b""
    if width == 8:
        return flat.astype(np.uint8).tobytes()
    if width == 16:
        return flat.astype("<u2").tobytes()
    if 8 % width == 0:
        per_byte = 8 // width
        padded = np.zeros(-(-count // per_byte) * per_byte, dtype=np.uint8)
        padded[:count] = flat
        groups = padded.reshape(-1, per_byte)
        shifts = (np.arange(per_byte, dtype=np.uint8) * width).astype(np.uint8)
        return np.bitwise_or.reduce(groups << shifts, axis=1).astype(np.uint8).tobytes()
    if width == 12:
        # Two 12-bit values make exactly three bytes: a | b << 12 as a 24-bit integer.
        padded = np.zeros(count + (count & 1), dtype=np.uint32)
        padded[:count] = flat
        pairs = padded[0::2] | (padded[1::2] << np.uint32(12))
        out = np.empty((pairs.size, 3), dtype=np.uint8)
        out[:, 0] = pairs & 0xFF
        out[:, 1] = (pairs >> 8) & 0xFF
        out[:, 2] = (pairs >> 16) & 0xFF
        return out.tobytes()[: packed_len(count, width)]
    return _pack_generic(flat, width)


def _pack_generic(flat: np.ndarray, width: int) -> bytes:
    bits = ((flat[:, None] >> np.arange(width, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_uints(blob: bytes, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uints`: ``count`` values as int64.

    Raises :class:`ProtocolError` if the blob length is not exactly
    ``packed_len(count, width)`` or a padding bit is set: one update has exactly one
    byte representation, so its digest identifies it.
    """
    _check_width(width)
    expected = packed_len(count, width)
    if len(blob) != expected:
        raise ProtocolError(
            f"packed blob has {len(blob)} bytes, expected {expected} for {count} values of {width} bits")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    used_bits = (count * width) % 8
    if used_bits and blob[-1] >> used_bits:
        raise ProtocolError("packed blob has non-zero padding bits; re-encode with this codec")
    raw = np.frombuffer(blob, dtype=np.uint8)
    if width == 8:
        return raw.astype(np.int64)
    if width == 16:
        return np.frombuffer(blob, dtype="<u2").astype(np.int64)
    if 8 % width == 0:
        per_byte = 8 // width
        shifts = (np.arange(per_byte, dtype=np.uint8) * width).astype(np.uint8)
        codes = (raw[:, None] >> shifts) & np.uint8((1 << width) - 1)
        return codes.reshape(-1)[:count].astype(np.int64)
    if width == 12:
        padded = np.zeros(-(-raw.size // 3) * 3, dtype=np.uint32)
        padded[: raw.size] = raw
        triples = padded.reshape(-1, 3)
        pairs = triples[:, 0] | (triples[:, 1] << np.uint32(8)) | (triples[:, 2] << np.uint32(16))
        out = np.empty((pairs.size, 2), dtype=np.int64)
        out[:, 0] = pairs & 0xFFF
        out[:, 1] = pairs >> np.uint32(12)
        return out.reshape(-1)[:count]
    return _unpack_generic(raw, count, width)


def _unpack_generic(raw: np.ndarray, count: int, width: int) -> np.ndarray:
    bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
    weights = np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))
    return bits.astype(np.int64) @ weights


def align_unit(width: int) -> int:
    """Values that fill a whole number of bytes: a stream padded to a multiple of this
    many values ends on a byte boundary (12 bits: 2 values in 3 bytes)."""
    return 8 // math.gcd(width, 8)


def pack_segments(values: np.ndarray, starts: Sequence[int], counts: Sequence[int], width: int) -> list[bytes]:
    """The :func:`pack_uints` bytes of each segment ``values[start : start + count]``.

    ``values`` holds the segments at multiples of :func:`align_unit`, with zeros in
    between, so each segment's bytes are a slice of one packed array: the zeros after a
    segment are exactly the zero padding bits its own packing would end with.
    """
    packed = pack_uints(values, width)
    return [packed[start * width // 8 : start * width // 8 + packed_len(count, width)]
            for start, count in zip(starts, counts)]


def unpack_segments(blobs: Sequence[bytes], counts: Sequence[int], width: int) -> np.ndarray:
    """Inverse of :func:`pack_segments`: the padded array (int64), zeros between segments.

    Each blob must already have its exact length (``packed_len(count, width)``); raises
    :class:`ProtocolError` if a padding bit is set.
    """
    unit = align_unit(width)
    parts: list[bytes] = []
    total = 0
    for blob, count in zip(blobs, counts):
        used_bits = (count * width) % 8
        if used_bits and blob[-1] >> used_bits:
            raise ProtocolError("packed blob has non-zero padding bits; re-encode with this codec")
        padded = -(-count // unit) * unit
        parts.append(blob)
        parts.append(bytes(padded * width // 8 - len(blob)))
        total += padded
    return unpack_uints(b"".join(parts), total, width)
