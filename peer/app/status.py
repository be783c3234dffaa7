"""A snapshot of a whole swarm from its DHT records, and its terminal rendering.

``collect`` reads records (I/O); ``render`` is pure (snapshot in, rich table out), so it
is tested on a fixed-width console; the ``--watch`` loop only swaps the live view.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.table import Table

from swarmtrain.dht import SwarmRecords, load_or_create_identity, start_dht
from swarmtrain.peer.round.clock import PhaseClock
from swarmtrain.peer.config import SwarmConfig


@dataclass(frozen=True)
class PeerStatus:
    peer_id: str
    role: str
    round: int
    version: str
    state_checksum: str
    last_val_loss: float | None
    bytes_sent: int
    bytes_received: int
    updates_accepted: int
    updates_rejected: int
    seconds_since_heartbeat: float
    last_round_s: float | None
    resyncs: int = 0
    utilisation: float | None = None   # share of wall time in inner steps
    samples_per_s: float | None = None


@dataclass(frozen=True)
class SwarmSnapshot:
    swarm: str
    task: str | None
    round: int | None
    phase: str | None
    version: str | None       # the version most live peers hold
    peers: tuple[PeerStatus, ...]
    taken_at: float

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def collect(records: SwarmRecords) -> SwarmSnapshot:
    """Read genesis and heartbeats; works from a client-mode DHT node."""
    now = time.time()
    genesis = records.read_genesis()
    round_index = phase = None
    task = None
    if genesis is not None:
        config = SwarmConfig.from_dict(genesis.config)
        position = PhaseClock(genesis.genesis_time, config.timing).position(now)
        round_index, phase, task = position.round, position.phase.value, genesis.task
    peers = tuple(sorted(
        (PeerStatus(peer_id=p, role=r.role, round=r.round, version=r.version_id, state_checksum=r.state_checksum,
                    last_val_loss=r.last_val_loss, bytes_sent=r.bytes_sent, bytes_received=r.bytes_received,
                    updates_accepted=r.updates_accepted, updates_rejected=r.updates_rejected,
                    seconds_since_heartbeat=round(now - r.time, 1), last_round_s=r.last_round_s,
                    resyncs=r.resyncs, utilisation=r.utilisation, samples_per_s=r.samples_per_s)
         for p, r in records.peers().items()),
        key=lambda s: s.peer_id,
    ))
    versions = Counter(p.version for p in peers)
    version = min(versions.items(), key=lambda kv: (-kv[1], kv[0]))[0] if versions else None
    return SwarmSnapshot(swarm=records.swarm, task=task, round=round_index, phase=phase, version=version,
                         peers=peers, taken_at=now)


def render(snapshot: SwarmSnapshot) -> Table:
    """The swarm as a table: one row per peer, peers off the majority version marked.

    Sized for an 80-column terminal (no vertical rules, short ids), so a row never wraps.
    """
    where = "no genesis yet" if snapshot.round is None else f"round {snapshot.round} ({snapshot.phase})"
    title = f"swarm {snapshot.swarm!r}: {where}, {len(snapshot.peers)} peer(s)"
    if snapshot.version:
        title += f", version {snapshot.version[:12]}"
    resyncs = sum(p.resyncs for p in snapshot.peers)
    if resyncs:  # worth a look: honest peers should compute the same versions on their own
        title += f", {resyncs} resync(s)"
    # At least as wide as the title, so a short table does not wrap it.
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=0, min_width=len(title))
    for column, justify in (("peer", "left"), ("role", "left"), ("round", "right"), ("version", "left"),
                            ("loss", "right"), ("busy", "right"), ("smp/s", "right"), ("sent", "right"),
                            ("recv", "right"), ("ok/rej", "right")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for peer in snapshot.peers:
        in_sync = peer.version == snapshot.version
        table.add_row(
            peer.peer_id[:8] + "…", peer.role, str(peer.round),
            peer.version[:8] + ("" if in_sync else " ≠"),
            "-" if peer.last_val_loss is None else f"{peer.last_val_loss:.3f}",
            "-" if peer.utilisation is None else f"{peer.utilisation:.0%}",
            "-" if peer.samples_per_s is None else f"{peer.samples_per_s:.0f}",
            _size(peer.bytes_sent), _size(peer.bytes_received),
            f"{peer.updates_accepted}/{peer.updates_rejected}",
        )
    return table


def _size(n: float) -> str:
    """Compact binary sizes (``512B``, ``2.0K``, ``999M``): a status row must fit 80 columns."""
    for unit in ("B", "K", "M", "G"):
        if n < 1000 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" or n >= 100 else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


class SwarmObserver:
    """A client-mode DHT node that only reads the swarm's records (own throwaway identity)."""

    def __init__(self, swarm: str, initial_peers: Sequence[str]) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="swarmtrain-status-")
        identity = load_or_create_identity(Path(self._tmp.name))
        self.dht = start_dht(initial_peers=list(initial_peers), identity=identity, swarm=swarm, client_mode=True)
        self.records = SwarmRecords(self.dht, identity, swarm)

    def snapshot(self) -> SwarmSnapshot:
        return collect(self.records)

    def close(self) -> None:
        self.dht.shutdown()
        self._tmp.cleanup()
