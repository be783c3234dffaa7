"""The size of an update, as checkers and contributors measure it.

A peer's own honest update norm joins the round's median that its checks compare against,
so the contributor and the checker must measure it the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor


def update_norm(tensors: Mapping[str, Tensor]) -> float:
    """L2 norm over all tensors (accumulated in float64: only for comparisons, never merged)."""
    total = 0.0
    for t in tensors.values():
        total += float(t.double().pow(2).sum())
    return math.sqrt(total) if math.isfinite(total) else math.inf
