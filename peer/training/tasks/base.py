"""What a task gives the swarm: a model, a training stream per peer, held-out batches.

A task is built from the swarm's :class:`~swarmtrain.peer.config.SwarmConfig`, so every
peer of a swarm builds the same initial model (same seed, same parameters) while each
peer draws its own training stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import nn

Batch = tuple[torch.Tensor, ...]


class TaskError(ValueError):
    """A task cannot be found or built; the message says which names are valid."""


class Task(ABC):
    """Interface for built-in and user tasks (``--task module:function``)."""

    name: str

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The initial model; bit-identical on every machine for the same config seed.

        Its trainable parameters are the swarm's state (trained, sent, merged, checksummed);
        parameters it freezes (``requires_grad=False``, e.g. a LoRA base) stay local, so a
        task that freezes some must make the initial trainable ones depend on them (the
        genesis pins only the state's checksum).
        """

    @abstractmethod
    def train_batches(self, stream_seed: int) -> Iterator[Batch]:
        """An endless stream of training batches; different seeds give different streams."""

    @abstractmethod
    def heldout_batches(self, count: int, seed: int) -> list[Batch]:
        """``count`` batches from held-out data, chosen by ``seed`` (never from training data)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean loss of ``model`` on ``batch`` as a scalar tensor (nats per target)."""
