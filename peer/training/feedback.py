"""Error feedback: what the codec dropped this round is sent in a later round.

SparseLoCo-style (docs/decisions.md, "Round math"): the buffer decays by ``decay`` before the new
pseudo-gradient is added, so it doubles as the outer momentum; the outer step itself is
then a plain average. ``decay = 1`` is classic error feedback, ``decay = 0`` drops the
residual (no feedback at all).

The buffer is local to one peer and never leaves it; the peer saves it in its data dir
after every round (:meth:`ErrorFeedback.to_bytes`), so a restarted peer keeps its residual.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from swarmtrain.peer.training.localstate import LocalStateError, tensors_from_bytes, tensors_to_bytes


class FeedbackStateError(LocalStateError):
    """Saved error-feedback state cannot be used; the peer starts with an empty residual."""


class ErrorFeedback:
    """Per-peer residual buffer ``e``: ``e <- decay*e + delta``; send ``C(e)``; ``e <- e - C(e)``."""

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"error-feedback decay must be in [0, 1], got {decay}")
        self.decay = decay
        self._buffer: dict[str, Tensor] = {}

    def accumulate(self, delta: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fold this round's pseudo-gradient into the buffer and return what to encode."""
        decay = torch.tensor(self.decay, dtype=torch.float32)
        for name, value in delta.items():
            value = value.detach().to(torch.float32)
            previous = self._buffer.get(name)
            if previous is None or previous.shape != value.shape:
                self._buffer[name] = value.clone()
            else:
                self._buffer[name] = previous * decay + value
        return {name: self._buffer[name] for name in delta}

    def settle(self, transmitted: Mapping[str, Tensor]) -> None:
        """Remove what was actually sent (the decoded payload) from the buffer."""
        for name, sent in transmitted.items():
            if name in self._buffer:
                self._buffer[name] = self._buffer[name] - sent

    def residual_norm(self) -> float:
        """L2 norm of what is still owed (for logs and tests)."""
        total = sum(float(t.double().pow(2).sum()) for t in self._buffer.values())
        return total ** 0.5

    def state(self) -> dict[str, Tensor]:
        return {name: t.clone() for name, t in self._buffer.items()}

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        self._buffer = {name: t.detach().to(torch.float32).clone() for name, t in state.items()}

    def to_bytes(self) -> bytes:
        """The buffer as safetensors bytes (for the data dir)."""
        return tensors_to_bytes(self._buffer)

    def load_bytes(self, data: bytes, shapes: Mapping[str, torch.Size]) -> None:
        """Restore a buffer saved by :meth:`to_bytes`; it must fit the model's ``shapes``."""
        try:
            state = tensors_from_bytes(data, "error feedback")
        except LocalStateError as error:
            raise FeedbackStateError(str(error)) from error
        for name, tensor in state.items():
            if name not in shapes or tensor.shape != shapes[name] or not tensor.is_floating_point():
                raise FeedbackStateError(f"saved error feedback for {name!r} does not fit the model")
        self.load_state(state)
