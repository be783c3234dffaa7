"""Whether an update's bytes may touch the model at all: one gate for checkers and merges.

A payload is opened with the model's element cap, must use exactly the swarm's codec
settings and carry no metadata (metadata would let an author grind its digest, and so its
checkers, for free, and dense fp32 sent into a 2-bit swarm would cost everyone 16x the
bytes), and must name only the model's tensors, with their shapes, all finite. Checkers
reject such an update with the reason; a merge refuses it even when a dishonest majority
accepted it, so every honest peer computes the same version without it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from swarmtrain.peer.config import CodecConfig
from swarmtrain.protocol import DecodedUpdate, ProtocolError, read_update


class InvalidUpdate(ValueError):
    """The update cannot be applied to this swarm's model; ``str(error)`` is the reason."""


def structural_problem(update: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> str | None:
    """Why the update cannot apply to these parameters, or None when it can."""
    unknown = sorted(set(update) - set(params))
    if unknown:
        return f"unknown tensors {unknown[:3]}"
    for name, tensor in update.items():
        if tensor.shape != params[name].shape:
            return f"shape of {name!r} is {tuple(tensor.shape)}, expected {tuple(params[name].shape)}"
        if not bool(torch.isfinite(tensor).all()):
            return f"non-finite values in {name!r}"
    return None


def settings_problem(decoded: DecodedUpdate, codec: CodecConfig) -> str | None:
    """Why the payload's codec settings or metadata are not the swarm's, or None."""
    if (decoded.density, decoded.bits, decoded.chunk) != (codec.density, codec.bits, codec.chunk):
        return (f"codec settings density={decoded.density:g} bits={decoded.bits} chunk={decoded.chunk}, "
                f"the swarm's are density={codec.density:g} bits={codec.bits} chunk={codec.chunk}")
    if decoded.metadata:
        return "carries metadata; swarm updates carry none"
    return None


def open_update(payload: bytes, *, params: Mapping[str, Tensor], codec: CodecConfig) -> dict[str, Tensor]:
    """The decoded tensors of ``payload``, or :class:`InvalidUpdate` saying why not."""
    try:
        decoded = read_update(payload, max_elements=sum(t.numel() for t in params.values()))
    except ProtocolError as error:
        raise InvalidUpdate(f"malformed payload: {error}") from error
    problem = settings_problem(decoded, codec) or structural_problem(decoded.tensors, params)
    if problem is not None:
        raise InvalidUpdate(problem)
    return decoded.tensors
