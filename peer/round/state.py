"""The model version a peer holds: parameters, outer optimizer state, id, checksum.

V(r) is the version every peer trains from in round ``r``; :attr:`ModelState.round` is
that ``r``. Saving and loading go through the :class:`~swarmtrain.peer.store.versions.VersionStore`
so every version a peer computed or downloaded is on disk before it is used.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.round.merge import OuterOptimizer, full_state
from swarmtrain.peer.store.versions import Contribution, StateChecksum, StoreError, VersionCommit, VersionStore
from swarmtrain.peer.training.tasks import Task
from swarmtrain.peer.training.trainer import model_params
from swarmtrain.protocol import genesis_version_id, state_checksum


@dataclass
class ModelState:
    """Mutable holder of the current version (owned by one node's main thread)."""

    params: dict[str, Tensor]
    outer: OuterOptimizer
    version: bytes
    round: int
    checksum: bytes
    validation_loss: float | None = None

    def commit_for(self, parent: bytes | None, produced_in: int,
                   contributions: tuple[Contribution, ...] = ()) -> VersionCommit:
        """The history entry of this version (``produced_in``: the round whose merge made it)."""
        return VersionCommit(
            version_id=self.version.hex(),
            parent_id=None if parent is None else parent.hex(),
            round=produced_in,
            created=time.time(),
            contributions=contributions,
            validation_loss=self.validation_loss,
            state_checksum=self.checksum.hex(),
        )

    def save(self, store: VersionStore, commit: VersionCommit) -> None:
        store.save(commit, self.params, self.outer.state())


def genesis_state(task: Task, config: SwarmConfig) -> ModelState:
    """V(0): the task's initial model with an empty outer state; its id follows from its checksum."""
    params = model_params(task.build_model())
    outer = OuterOptimizer(config.outer)
    checksum = state_checksum(full_state(params, outer))
    return ModelState(params=params, outer=outer, version=genesis_version_id(checksum), round=0,
                      checksum=checksum)


def checksum_of(params: Mapping[str, Tensor], extra: Mapping[str, Tensor]) -> str:
    """State checksum (hex) of stored parameters + outer state, as the store's hook wants it."""
    return state_checksum({**params, **extra}).hex()


def state_problem(params: Mapping[str, Tensor], extra: Mapping[str, Tensor],
                  model: Mapping[str, Tensor]) -> str | None:
    """Why a received state cannot be this swarm's model, or None when it can.

    The checksum only proves that the bytes are what their publishers chose; these checks
    make sure that what they chose is the model: exactly its tensor names, shapes and
    dtypes, an outer state only for those names, and every value finite.
    """
    if set(params) != set(model):
        odd = sorted(set(params) ^ set(model))
        return f"its tensor names differ from the model's (e.g. {odd[:3]})"
    prefix = "outer.momentum."
    for name in extra:
        if not name.startswith(prefix) or name[len(prefix):] not in model:
            return f"it holds outer state {name!r} for no tensor of the model"
    for name, tensor in [*params.items(), *((n[len(prefix):], t) for n, t in extra.items())]:
        want = model[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            return (f"{name!r} is {tensor.dtype} {tuple(tensor.shape)}, the model has "
                    f"{want.dtype} {tuple(want.shape)}")
        if not bool(torch.isfinite(tensor).all()):
            return f"{name!r} holds values that are not finite"
    return None


def verified_checksum(model: Mapping[str, Tensor]) -> StateChecksum:
    """The store's checksum hook for a state received from another peer: it refuses a
    state that is not this model (:func:`state_problem`) before computing the checksum."""
    def checksum(params: Mapping[str, Tensor], extra: Mapping[str, Tensor]) -> str:
        problem = state_problem(params, extra, model)
        if problem is not None:
            raise StoreError(f"the state received is not this swarm's model: {problem}; "
                             "fetch it from another peer")
        return checksum_of(params, extra)
    return checksum


def load_version(store: VersionStore, version_hex: str, outer: OuterOptimizer, next_round: int) -> ModelState:
    """Load a stored version as the state to train from in ``next_round``."""
    commit = store.commit(version_hex)
    params, extra = store.load(version_hex)
    outer.load_state(extra)
    checksum = state_checksum(full_state(params, outer))
    return ModelState(params=params, outer=outer, version=bytes.fromhex(commit.version_id),
                      round=next_round, checksum=checksum, validation_loss=commit.validation_loss)
