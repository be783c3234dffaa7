"""Deterministic per-chunk top-k by magnitude.

``torch.topk`` leaves the order among equal magnitudes unspecified, so two machines
could keep different entries of the same chunk and send different bytes for the same
update. Only the k-th largest *value* is well defined; this module takes every entry
strictly above it, then the lowest-index entries equal to it until k are kept. The
result (column indices ascending) is the same on every machine. Rows without surplus
ties (nearly all rows of real updates) take topk's indices directly, which is faster.
"""

from __future__ import annotations

import torch


def selection_magnitude(rows: torch.Tensor) -> torch.Tensor:
    """|x| with NaN ranked above everything (as +inf).

    A non-finite value is then always kept, so an update built with
    ``check_finite=False`` carries it into the payload, where the decoder rejects it,
    instead of hiding it among the dropped entries.
    """
    return torch.nan_to_num(rows.abs(), nan=float("inf"))


def select_topk(rows: torch.Tensor, keep: int) -> torch.Tensor:
    """Column indices (int64, ascending per row) of the ``keep`` largest |values| per row.

    ``rows`` is a float32 matrix ``[r, c]`` with ``1 <= keep <= c``. Ties at the
    threshold go to the lowest column index.
    """
    r, c = rows.shape
    if keep == c:
        return torch.arange(c, dtype=torch.int64).expand(r, c)
    mag = selection_magnitude(rows)
    top = torch.topk(mag, keep, dim=1, largest=True, sorted=True)
    threshold = top.values[:, keep - 1 :]
    # Where exactly ``keep`` entries reach the threshold the top-k set is unique and
    # topk's own indices are right whatever their order; only rows with surplus ties
    # (typically a chunk of mostly zeros) need the lowest-index rule.
    cols = top.indices.sort(dim=1).values
    surplus = ((mag >= threshold).sum(dim=1) > keep).nonzero().reshape(-1)
    if surplus.numel():
        cols[surplus] = _lowest_index_ties(mag[surplus], threshold[surplus], keep)
    return cols


def _lowest_index_ties(mag: torch.Tensor, threshold: torch.Tensor, keep: int) -> torch.Tensor:
    """All entries above the threshold, then the first threshold-equal ones up to ``keep``."""
    above = mag > threshold
    at = mag == threshold
    need = keep - above.sum(dim=1, keepdim=True)
    take = above | (at & (torch.cumsum(at, dim=1) <= need))
    return take.nonzero(as_tuple=True)[1].reshape(mag.shape[0], keep)
