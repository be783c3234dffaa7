"""What a round needs from the running peer, and nothing more.

The engine and the sync step take a :class:`RoundContext` instead of the whole node:
the swarm's records, the blob exchange, the version store, a clock, the settings and
this peer's identity. The networked peer passes the real ones; unit tests pass
in-memory records and exchange and a :class:`~swarmtrain.peer.round.clock.ManualClock`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from swarmtrain.dht import CommitRecord, PeerRecord, ResultRecord, VoteRecord
from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.exchange.client import Progress
from swarmtrain.peer.exchange.service import ExchangeStats
from swarmtrain.peer.round.check import Checker
from swarmtrain.peer.round.clock import Clock, PhaseClock
from swarmtrain.peer.store.versions import VersionStore
from swarmtrain.protocol.codec import max_payload_bytes
from swarmtrain.protocol.work import IdentityWork


class RoundRecords(Protocol):
    """The swarm's signed records a round reads and writes (``SwarmRecords`` on the DHT)."""

    def publish_commit(self, round_: int, rec: CommitRecord) -> bool: ...

    def commits(self, round_: int) -> dict[str, CommitRecord]: ...

    def publish_votes(self, round_: int, rec: VoteRecord) -> bool: ...

    def votes(self, round_: int) -> dict[str, VoteRecord]: ...

    def publish_result(self, round_: int, rec: ResultRecord) -> bool: ...

    def results(self, round_: int) -> dict[str, ResultRecord]: ...

    def peers(self) -> dict[str, PeerRecord]: ...


class BlobExchange(Protocol):
    """Serving and fetching blobs by digest (``Exchange`` over p2pd streams)."""

    def serve(self, kind: str, digest_hex: str, data: bytes) -> None: ...

    def serve_provider(self, kind: str, digest_hex: str, provider: Callable[[], bytes]) -> None: ...

    def unserve(self, kind: str, digest_hex: str) -> bool: ...

    def fetch(self, peer_id: str, kind: str, digest_hex: str, *, max_size: int, timeout: float,
              progress: Progress | None = None) -> bytes: ...

    def fetch_future(self, peer_id: str, kind: str, digest_hex: str, *, max_size: int, timeout: float,
                     stall_timeout: float | None = None,
                     progress: Progress | None = None) -> concurrent.futures.Future[bytes]: ...

    def stats(self) -> ExchangeStats: ...


@dataclass(frozen=True)
class RoundContext:
    peer_id: str
    config: SwarmConfig
    records: RoundRecords
    exchange: BlobExchange
    store: VersionStore
    clock: Clock
    phases: PhaseClock
    checker: Checker
    founder: str | None = None  # the genesis' creator: the one peer with standing in round 0
    work: IdentityWork | None = None  # the swarm's price of an identity (None: identities are free)
    work_nonce: int = 0  # this peer's proof of that work, sent with each commitment
    announce: Callable[[str], None] = print


def _elements(params: Mapping[str, Tensor]) -> int:
    return sum(t.numel() for t in params.values())


def max_update_bytes(params: Mapping[str, Tensor]) -> int:
    """The largest update payload a model of this size can honestly have."""
    return max_payload_bytes(_elements(params))


def max_state_bytes(params: Mapping[str, Tensor]) -> int:
    """The largest state file of this model: fp32 parameters and as much outer state,
    plus room for the safetensors header."""
    return (1 << 20) + 16 * _elements(params)
