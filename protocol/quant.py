"""Linear symmetric quantization of the kept values, one scale per chunk.

With ``L = 2**bits - 1`` a code ``q`` in ``[0, L]`` means ``(2q - L) * step`` and
``step = float32(max|kept| / L)``: the levels are the odd multiples of ``step`` up to
``L * step ~= max|kept|`` (for 2 bits: ±a/3, ±a). There is no zero level; a kept value
is never dropped, it is rounded to the nearest level, so the error per value is at
most ``step``.

Decoding is ``float32(2q - L) * step``: one IEEE multiply of an exactly representable
integer by a float32, never a fused multiply-add, so every machine decodes the same
bits. The arithmetic is numpy's float32 (torch's gives the same bits: every operation
here is a correctly rounded IEEE one; numpy costs ~1 us per call where torch costs ~3,
which is most of the time on small tensors).

bitsandbytes was measured against this path and is not used (``benchmarks/codec.py``,
section ``bnb_vs_codec``: 8-bit quantization of the 9,512 kept values of 8 real
stdlib-lm pseudo-gradients at density 0.01; 2 shared cores, 1 thread, torch 2.13 CPU,
bitsandbytes 0.50.2):

- speed: this module 205-224 M values/s with torch, 318 with numpy, ``quantize_blockwise``
  with the linear signed code 44-73 M values/s (3-5x slower; runs on a noisy shared
  machine). Its blocks must be 64..4096 values, but a chunk keeps
  ``round(density * chunk)`` values (41 at 1 % of 4096), so each chunk's values have to
  be zero-padded to a 64-value block first.
- accuracy: relative L2 error 0.002883 (this module) vs 0.002887 (bnb, linear code: the same
  256 levels, so nothing to gain); bnb's default dynamic code is worse here (0.0052)
  and could not be decoded as ``(2q - L) * step`` anyway.
- coverage: bnb has no linear 2- or 4-bit blockwise code (its 4-bit is FP4/NF4), and
  importing it costs ~2.5 s per process.

So the codec does not use bitsandbytes: payloads never depend on it, and every peer
encodes the same codes (bnb's nearest-code search picked a different code than exact
rounding for 12 % of the values, so mixing the two would break "same input, same
bytes" across peers).
"""

from __future__ import annotations

import numpy as np


def levels(bits: int) -> int:
    """``L = 2**bits - 1``: the largest code; codes span ``[0, L]``."""
    return (1 << bits) - 1


def chunk_steps(kept: np.ndarray, bits: int) -> np.ndarray:
    """Per-row ``float32(max|kept| / L)`` for a float32 matrix ``[r, k]``.

    A NaN in a row makes its step NaN (``max`` propagates NaN), an inf makes it inf:
    the decoder rejects non-finite steps, which is how a hostile NaN payload is caught.
    """
    if kept.shape[1] == 0:
        return np.zeros(kept.shape[0], dtype=np.float32)
    steps = np.abs(kept).max(axis=1) / np.float32(levels(bits))
    # A subnormal step is not canonical (the decoder refuses it): such a row is all but
    # zero, and sends zeros. NaN compares false and stays, to be rejected as before.
    steps[steps < np.finfo(np.float32).tiny] = 0
    return steps


def quantize(kept: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes (uint8 ``[r, k]``) and steps (float32 ``[r]``) for a float32 matrix of kept values."""
    big_l = levels(bits)
    steps = chunk_steps(kept, bits)
    # A zero or non-finite step gives no usable scale; divide by 1 there so the codes
    # stay defined (a zero step decodes every code to 0; a non-finite one is rejected).
    finite = np.isfinite(steps)
    divisor = np.where(finite & (steps > 0), steps, np.float32(1))
    scaled = kept / divisor[:, None]
    if not finite.all():
        # Only a row with a NaN or inf has a non-finite step, and only such a row can
        # scale to a non-finite value (a finite |x| <= max|x| over a step of about
        # max|x| / L stays within ~2L); elsewhere this would change nothing.
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=big_l, neginf=-big_l)
    codes = np.rint((scaled + np.float32(big_l)) * np.float32(0.5))
    return codes.clip(0, big_l, out=codes).astype(np.uint8), steps


def dequantize(codes: np.ndarray, steps: np.ndarray, bits: int) -> np.ndarray:
    """``float32(2q - L) * step`` per row: one exact-input multiply, bit-identical everywhere."""
    signed = (codes.astype(np.int32) * 2 - levels(bits)).astype(np.float32)
    with np.errstate(over="ignore"):  # a step near float32's max can round L * step up to inf, as before
        return signed * steps[:, None]
