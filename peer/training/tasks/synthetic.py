"""Task ``synthetic``: regress a fixed random teacher network with a small MLP student.

Made for tests and quick swarm checks: a step takes a fraction of a millisecond, the loss
falls clearly within a hundred AdamW steps, and there is no data to read. The teacher is
built from the swarm seed, so every peer learns the same function; inputs for training
and held-out batches come from separate seed spaces, so held-out points are never trained on.
The student's size follows ``model.d_model`` (hidden width) and ``model.layers`` (hidden layers).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from swarmtrain.peer.config import SwarmConfig

from .base import Batch, Task
from .rng import make_generator, portable_normal, without_global_rng

IN_DIM = 16
OUT_DIM = 4
_TEACHER_WIDTH = 32


def _init_linear(layer: nn.Linear, gen: torch.Generator) -> None:
    """Weights ~ N(0, 1/fan_in) so activations keep unit scale; biases zero."""
    with torch.no_grad():
        layer.weight.copy_(portable_normal(layer.weight.shape, layer.in_features ** -0.5, gen))
        layer.bias.zero_()


def _mlp(sizes: list[int], activation: type[nn.Module], gen: torch.Generator) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` with ``activation`` in between, initialised from ``gen``."""
    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i:
                layers.append(activation())
            layers.append(nn.Linear(a, b))
        return nn.Sequential(*layers)

    model = without_global_rng(build)
    for layer in model:
        if isinstance(layer, nn.Linear):
            _init_linear(layer, gen)
    return model


class Synthetic(Task):
    """Mean squared error of a student MLP against a frozen teacher, inputs ~ N(0, I)."""

    name = "synthetic"

    def __init__(self, config: SwarmConfig) -> None:
        self.config = config
        self._teacher: nn.Sequential | None = None

    @property
    def teacher(self) -> nn.Sequential:
        # Built lazily: a task object is cheap to create until it is used.
        if self._teacher is None:
            teacher = _mlp([IN_DIM, _TEACHER_WIDTH, OUT_DIM], nn.Tanh,
                           make_generator("synthetic-teacher", self.config.seed))
            self._teacher = teacher.requires_grad_(False).eval()
        return self._teacher

    def build_model(self) -> nn.Module:
        width, depth = self.config.model.d_model, self.config.model.layers
        return _mlp([IN_DIM] + [width] * depth + [OUT_DIM], nn.GELU,
                    make_generator("synthetic-student", self.config.seed))

    def _batch(self, gen: torch.Generator) -> Batch:
        x = portable_normal((self.config.train.batch_size, IN_DIM), 1.0, gen)
        with torch.no_grad():
            y = self.teacher(x)
        return x, y

    def train_batches(self, stream_seed: int) -> Iterator[Batch]:
        gen = make_generator("synthetic-train", self.config.seed, stream_seed)
        while True:
            yield self._batch(gen)

    def heldout_batches(self, count: int, seed: int) -> list[Batch]:
        if count < 0:
            raise ValueError(f"heldout_batches: count must be >= 0, got {count}")
        gen = make_generator("synthetic-heldout", self.config.seed, seed)
        return [self._batch(gen) for _ in range(count)]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)


def make_synthetic(config: SwarmConfig) -> Synthetic:
    """Factory used by :func:`~swarmtrain.peer.training.tasks.load_task`."""
    return Synthetic(config)
