"""Model state <-> safetensors bytes.

One file per version holds the parameters and the outer optimizer state (momentum,
error-feedback buffers), told apart by name prefixes. One file means one atomic rename
per version and one blob to send when a peer resyncs.

Packing is deterministic (safetensors orders its header itself and we add fixed
metadata), so two peers holding the same state produce the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import StoreError

PARAM_PREFIX = "params/"
EXTRA_PREFIX = "extra/"
STATE_FORMAT = "swarmtrain.state/1"


def _prepare(tensors: Mapping[str, torch.Tensor], what: str,
             seen_storages: set[tuple[str, int]]) -> dict[str, torch.Tensor]:
    """Dense, contiguous CPU tensors that share no memory with each other."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise StoreError(f"{what} names must be non-empty strings, got {name!r:.80}")
        if not isinstance(tensor, torch.Tensor):
            raise StoreError(
                f"{what} {name!r} must be a torch.Tensor, got {type(tensor).__name__}"
            )
        if tensor.layout != torch.strided:
            raise StoreError(f"{what} {name!r} is sparse; pass a dense tensor (.to_dense())")
        t = tensor.detach().to("cpu").contiguous()
        # Tied weights (one storage under two names) are refused by safetensors; a copy
        # stores each name on its own, and loading into a tied model still works.
        key = (str(t.device), t.untyped_storage().data_ptr())
        if key[1] != 0 and key in seen_storages:
            t = t.clone()
        else:
            seen_storages.add(key)
        out[name] = t
    return out


def pack_state(params: Mapping[str, torch.Tensor],
               extra_state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize parameters and outer optimizer state into one safetensors blob."""
    if not params:
        raise StoreError("a version needs at least one parameter tensor; params is empty")
    seen: set[tuple[str, int]] = set()
    flat = {PARAM_PREFIX + k: v for k, v in _prepare(params, "parameter", seen).items()}
    flat.update(
        {EXTRA_PREFIX + k: v for k, v in _prepare(extra_state, "extra state", seen).items()}
    )
    try:
        return st_save(flat, metadata={"format": STATE_FORMAT})
    except (ValueError, RuntimeError, TypeError, SafetensorError) as err:
        raise StoreError(f"cannot serialize model state: {err}") from err


def unpack_state(data: bytes, source: str) -> tuple[dict[str, torch.Tensor],
                                                     dict[str, torch.Tensor]]:
    """Parse a blob made by :func:`pack_state` into (params, extra_state).

    ``source`` names where the bytes came from (a file, a peer) for the error message.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StoreError(f"state from {source} must be bytes, got {type(data).__name__}")
    try:
        flat = st_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError, TypeError, OverflowError) as err:
        raise StoreError(
            f"state from {source} is not a valid safetensors blob ({err}); "
            "fetch it again from a peer that holds this version"
        ) from err
    params: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    for name, tensor in flat.items():
        if name.startswith(PARAM_PREFIX) and len(name) > len(PARAM_PREFIX):
            params[name[len(PARAM_PREFIX):]] = tensor
        elif name.startswith(EXTRA_PREFIX) and len(name) > len(EXTRA_PREFIX):
            extra[name[len(EXTRA_PREFIX):]] = tensor
        else:
            raise StoreError(
                f"state from {source} has tensor {name!r:.80}, which is neither "
                f"{PARAM_PREFIX}* nor {EXTRA_PREFIX}*; it was not written by swarmtrain"
            )
    if not params:
        raise StoreError(f"state from {source} holds no parameters; it is not a model state")
    return params, extra


def pack_export(params: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Serialize parameters only (plain names) with header metadata, for ``export``."""
    prepared = _prepare(params, "parameter", set())
    try:
        return st_save(prepared, metadata=dict(metadata))
    except (ValueError, RuntimeError, TypeError, SafetensorError) as err:
        raise StoreError(f"cannot serialize parameters for export: {err}") from err
