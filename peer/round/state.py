"""The model version a peer holds: parameters, outer optimizer state, id, checksum.

V(r) is the version every peer trains from in round ``r``; :attr:`ModelState.round` is
that ``r``. Saving and loading go through the :class:`~swarmtrain.peer.store.versions.VersionStore`
so every version a peer computed or downloaded is on disk before it is used.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.round.merge import OuterOptimizer, full_state
from swarmtrain.peer.store.versions import Contribution, VersionCommit, VersionStore
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


def load_version(store: VersionStore, version_hex: str, outer: OuterOptimizer, next_round: int) -> ModelState:
    """Load a stored version as the state to train from in ``next_round``."""
    commit = store.commit(version_hex)
    params, extra = store.load(version_hex)
    outer.load_state(extra)
    checksum = state_checksum(full_state(params, outer))
    return ModelState(params=params, outer=outer, version=bytes.fromhex(commit.version_id),
                      round=next_round, checksum=checksum, validation_loss=commit.validation_loss)
