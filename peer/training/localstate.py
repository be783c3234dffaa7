"""What a peer keeps for itself between runs: safetensors bytes of named tensors.

Two pieces of state never leave a peer but matter after a restart: its error-feedback
residual (:mod:`feedback`) and its inner AdamW moments (:mod:`trainer`; DiLoCo keeps them
across rounds). The node writes both to its data dir after every round, crash-safely,
and a restarted peer reads them back when they still fit its model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor


class LocalStateError(ValueError):
    """Saved peer-local state cannot be used; the peer starts that part afresh."""


def tensors_to_bytes(tensors: Mapping[str, Tensor]) -> bytes:
    """Named tensors as safetensors bytes (contiguous copies; names sorted by safetensors)."""
    return save_tensors({name: t.detach().contiguous() for name, t in tensors.items()})


def tensors_from_bytes(data: bytes, what: str) -> dict[str, Tensor]:
    """Named tensors from :func:`tensors_to_bytes` output: floats all finite, or integers
    (8-bit optimizer moments are uint8 codes, their step an int64)."""
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError) as error:
        raise LocalStateError(f"saved {what} is unreadable: {error}") from error
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                raise LocalStateError(f"saved {what} for {name!r} holds values that are not finite")
        elif tensor.dtype not in (torch.uint8, torch.int64):
            raise LocalStateError(f"saved {what} for {name!r} is {tensor.dtype}, not floats or integer codes")
    return tensors
