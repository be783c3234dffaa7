"""A snapshot of a whole swarm from its DHT records, and its terminal rendering.

``collect`` reads records (I/O); ``render`` and ``render_watch`` (the ``--watch`` view:
peers, loss trend, recent rounds) are pure (snapshot in, rich renderable out), so they
are tested on a fixed-width console; the ``--watch`` loop only swaps the live view.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from swarmtrain.dht import CommitRecord, ResultRecord, SwarmRecords, VoteRecord, load_or_create_identity, start_dht
from swarmtrain.peer.round.clock import Phase, PhaseClock
from swarmtrain.peer.round.recompute import claims
from swarmtrain.peer.round.vote import common_rejection
from swarmtrain.peer.config import RoundTiming, SwarmConfig

# Rounds the watch view lists (each costs three DHT reads until it is final, then none).
RECENT_ROUNDS = 5


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
    software_version: str | None = None
    loss_trend: tuple[float, ...] = ()  # held-out loss of its last versions, oldest first


@dataclass(frozen=True)
class Rejection:
    peer_id: str
    reason: str


@dataclass(frozen=True)
class RoundStatus:
    """One round as its records tell it: committed updates, and (once agreed) the outcome."""

    round: int
    committed: int
    accepted: int | None              # None: no peer has published the round's result yet
    rejected: tuple[Rejection, ...]
    version: str | None               # the version most peers' results name


@dataclass(frozen=True)
class SwarmPosition:
    """Where the swarm is at a moment, named as its peers name it.

    ``round`` is the round of the version peers hold then: during round r's agree phase
    peers have merged V(r+1) and report round r+1, so that is the swarm's round too,
    while ``phase`` and ``phase_round`` say whose phase it is (round r's agree).
    """

    round: int
    phase: str
    phase_round: int
    phase_ends_at: float


def swarm_position(genesis_time: float, timing: RoundTiming, now: float) -> SwarmPosition:
    """Pure: the swarm's round and phase at ``now``."""
    position = PhaseClock(genesis_time, timing).position(now)
    held = position.round + 1 if position.phase is Phase.AGREE else position.round
    return SwarmPosition(round=held, phase=position.phase.value, phase_round=position.round,
                         phase_ends_at=position.phase_end)


def round_status(round_index: int, commits: Mapping[str, CommitRecord], votes: Mapping[str, VoteRecord],
                 results: Mapping[str, ResultRecord]) -> RoundStatus:
    """Pure: a round's outcome from its records. The accepted set is what most peers'
    results say they merged; a rejection's reason is the voters' most common one."""
    authors = {c.digest: peer for peer, c in commits.items()}
    found = claims(round_index, results)
    if not found:
        return RoundStatus(round=round_index, committed=len(commits), accepted=None, rejected=(), version=None)
    version, accepted = found[0].version, {d.hex() for d in found[0].accepted}
    reasons = {voter: {d: v.reason for d, v in ballot.votes.items() if not v.accept and v.reason}
               for voter, ballot in votes.items()}
    common = common_rejection(reasons, {d: tuple(votes) for d in authors})
    rejected = tuple(Rejection(authors[d], common.get(d, "not accepted by its checkers"))
                     for d in sorted(authors, key=lambda d: authors[d]) if d not in accepted)
    return RoundStatus(round=round_index, committed=len(commits), accepted=len(accepted), rejected=rejected,
                       version=version)


@dataclass(frozen=True)
class SwarmSnapshot:
    swarm: str
    task: str | None
    round: int | None
    phase: str | None
    version: str | None       # the version most live peers hold
    peers: tuple[PeerStatus, ...]
    taken_at: float
    phase_round: int | None = None      # whose phase it is (round - 1 in an agree phase)
    phase_ends_at: float | None = None
    rounds: tuple[RoundStatus, ...] = ()  # recent rounds, newest first

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def collect(records: SwarmRecords, *, rounds: int = 0, known: dict[int, RoundStatus] | None = None,
            now: Callable[[], float] = time.time) -> SwarmSnapshot:
    """Read genesis and heartbeats (and the last ``rounds`` rounds); works from a
    client-mode DHT node. ``known``: final rounds from earlier calls (read once, kept).

    The clock is read after the records: reads take a while, and a moment taken before
    them names a phase already over by the time the snapshot is shown.
    """
    known = {} if known is None else known
    genesis = records.read_genesis()
    heartbeats = records.peers()
    config = None if genesis is None else SwarmConfig.from_dict(genesis.config)
    round_rows: list[RoundStatus] = []
    if genesis is not None and config is not None and rounds > 0:
        at = swarm_position(genesis.genesis_time, config.timing, now())
        latest = at.phase_round - (1 if at.phase == Phase.TRAIN.value else 0)  # a training round has no records yet
        for r in range(latest, max(-1, latest - rounds), -1):
            row = known.get(r) or round_status(r, records.commits(r), records.votes(r), records.results(r))
            if r < latest and row.accepted is not None:
                known[r] = row  # an agreed round before the current exchange no longer changes
            round_rows.append(row)
        for old in [r for r in known if r <= latest - rounds]:
            del known[old]  # bounded: only the rounds shown are kept
    taken = now()
    position = None if genesis is None or config is None else swarm_position(genesis.genesis_time, config.timing,
                                                                              taken)
    peers = tuple(sorted(
        (PeerStatus(peer_id=p, role=r.role, round=r.round, version=r.version_id, state_checksum=r.state_checksum,
                    last_val_loss=r.last_val_loss, bytes_sent=r.bytes_sent, bytes_received=r.bytes_received,
                    updates_accepted=r.updates_accepted, updates_rejected=r.updates_rejected,
                    seconds_since_heartbeat=round(taken - r.time, 1), last_round_s=r.last_round_s,
                    resyncs=r.resyncs, utilisation=r.utilisation, samples_per_s=r.samples_per_s,
                    software_version=r.software_version, loss_trend=tuple(r.loss_trend or ()))
         for p, r in heartbeats.items()),
        key=lambda s: s.peer_id,
    ))
    versions = Counter(p.version for p in peers)
    version = min(versions.items(), key=lambda kv: (-kv[1], kv[0]))[0] if versions else None
    return SwarmSnapshot(
        swarm=records.swarm, task=None if genesis is None else genesis.task,
        round=None if position is None else position.round, phase=None if position is None else position.phase,
        version=version, peers=peers, taken_at=taken,
        phase_round=None if position is None else position.phase_round,
        phase_ends_at=None if position is None else position.phase_ends_at, rounds=tuple(round_rows))


def where(snapshot: SwarmSnapshot) -> str:
    """``round 4 (train, 3s left)``, or ``round 4 (round 3 agree, 1s left)`` in an agree phase."""
    if snapshot.round is None:
        return "no genesis yet"
    phase = str(snapshot.phase)
    if snapshot.phase_round is not None and snapshot.phase_round != snapshot.round:
        phase = f"round {snapshot.phase_round} {phase}"
    if snapshot.phase_ends_at is not None:
        phase += f", {max(0.0, snapshot.phase_ends_at - snapshot.taken_at):.0f}s left"
    return f"round {snapshot.round} ({phase})"


def render(snapshot: SwarmSnapshot, *, watch: bool = False) -> Table:
    """The swarm as a table: one row per peer, peers off the majority version marked.

    Sized for an 80-column terminal (no vertical rules, short ids), so a row never wraps;
    ``watch`` adds each peer's software version and loss trend (a wider terminal's view).
    """
    title = f"swarm {snapshot.swarm!r}: {where(snapshot)}, {len(snapshot.peers)} peer(s)"
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
    if watch:
        table.add_column("trend", no_wrap=True)
        table.add_column("sw", no_wrap=True)
    for peer in snapshot.peers:
        in_sync = peer.version == snapshot.version
        cells = [
            peer.peer_id[:8] + "…", peer.role, str(peer.round),
            peer.version[:8] + ("" if in_sync else " ≠"),
            "-" if peer.last_val_loss is None else f"{peer.last_val_loss:.3f}",
            "-" if peer.utilisation is None else f"{peer.utilisation:.0%}",
            "-" if peer.samples_per_s is None else f"{peer.samples_per_s:.0f}",
            _size(peer.bytes_sent), _size(peer.bytes_received),
            f"{peer.updates_accepted}/{peer.updates_rejected}",
        ]
        if watch:
            cells += [sparkline(peer.loss_trend[-8:]) or "-", _software(peer.software_version)]
        table.add_row(*cells)
    return table


def _software(version: str | None) -> str:
    return "-" if version is None else version.removeprefix("swarmtrain ")


_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """One bar per value, scaled from the lowest (▁) to the highest (█)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    return "".join(_BARS[0 if span <= 0 else round((v - low) / span * (len(_BARS) - 1))] for v in values)


def swarm_trend(snapshot: SwarmSnapshot) -> list[float]:
    """The swarm's held-out loss over its last versions: per step back from the newest,
    the median over peers on the majority version (all peers when none is)."""
    peers = [p for p in snapshot.peers if p.version == snapshot.version and p.loss_trend] or \
        [p for p in snapshot.peers if p.loss_trend]
    length = max((len(p.loss_trend) for p in peers), default=0)
    back = [[p.loss_trend[-1 - i] for p in peers if len(p.loss_trend) > i] for i in range(length)]
    return [statistics.median(values) for values in reversed(back)]


def render_loss(snapshot: SwarmSnapshot) -> Panel:
    trend = swarm_trend(snapshot)
    if not trend:
        body = Text("no held-out loss yet (peers report one after their first merged round)")
    else:
        body = Text(f"{trend[0]:.3f} ")
        body.append(sparkline(trend), style="cyan")
        body.append(f" {trend[-1]:.3f}  over the last {len(trend)} version(s)")
        if len(trend) > 1:
            body.append(f", {trend[-1] - trend[0]:+.3f}", style="green" if trend[-1] < trend[0] else "red")
    return Panel(body, title="held-out loss", title_align="left", box=box.ROUNDED)


def render_rounds(snapshot: SwarmSnapshot) -> Panel:
    body = Text()
    for row in snapshot.rounds:
        if body:
            body.append("\n")
        if row.accepted is None:
            body.append(f"round {row.round}: {row.committed} update(s) committed, not agreed yet")
            continue
        body.append(f"round {row.round}: accepted {row.accepted}/{row.committed}, "
                    f"version {(row.version or '-')[:12]}")
        for rejection in row.rejected:
            body.append(f"\n  rejected {rejection.peer_id[:12]}…: {rejection.reason}", style="red")
    if not snapshot.rounds:
        body.append("no round records yet")
    return Panel(body, title="recent rounds", title_align="left", box=box.ROUNDED)


def render_watch(snapshot: SwarmSnapshot) -> Group:
    """``status --watch``: the peers (with trends and software), the loss trend, recent rounds."""
    return Group(render(snapshot, watch=True), render_loss(snapshot), render_rounds(snapshot))


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

        self._final_rounds: dict[int, RoundStatus] = {}

    def snapshot(self, rounds: int = 0) -> SwarmSnapshot:
        """The swarm now, with its last ``rounds`` rounds (agreed ones are read only once)."""
        return collect(self.records, rounds=rounds, known=self._final_rounds)

    def close(self) -> None:
        self.dht.shutdown()
        self._tmp.cleanup()
