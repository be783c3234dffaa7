"""Peers of a swarm in one process, for unit tests of the round engine.

The round's records live in a dict (:class:`MemoryRecords`, one view per peer of a shared
table), blobs in another (:class:`MemoryExchange`), time on a
:class:`~swarmtrain.peer.round.clock.ManualClock`. Everything else is the real code: the
engine, sync, checker, contributor, version store, trainer and progress tracker. These
stand in for the DHT and p2pd only to drive rounds phase by phase without a network;
the integration tests run the same engine over real p2pd daemons.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import base58

from swarmtrain.dht import CommitRecord, PeerRecord, ResultRecord, VoteRecord
from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.exchange.client import Progress
from swarmtrain.peer.exchange.errors import BlobNotFound, BlobTooLarge, PeerBusy
from swarmtrain.peer.exchange.server import BlobNotReady
from swarmtrain.peer.exchange.service import ExchangeStats
from swarmtrain.peer.round.check import Checker
from swarmtrain.peer.round.clock import ManualClock, Phase, PhaseClock
from swarmtrain.peer.round.context import RoundContext
from swarmtrain.peer.round.engine import AGREE_READ_SHARE, PUBLISH_MARGIN_S, RoundEngine
from swarmtrain.peer.round.state import ModelState, genesis_state
from swarmtrain.peer.round.sync import StateSync
from swarmtrain.peer.store.payloads import HISTORY_ROUNDS
from swarmtrain.peer.store.versions import VersionStore
from swarmtrain.peer.training.contribute import Contributor
from swarmtrain.peer.training.faults import skips_work, unpaid_nonce
from swarmtrain.peer.training.progress import ProgressTracker
from swarmtrain.peer.training.tasks import Task, load_task
from swarmtrain.peer.training.trainer import LocalTrainer
from swarmtrain.protocol.work import IdentityWork


@dataclass
class MemoryTable:
    """The swarm's records: (family, round) -> {peer: record}."""

    rows: dict[tuple[str, int], dict[str, object]] = field(default_factory=dict)
    peers: dict[str, PeerRecord] = field(default_factory=dict)


class MemoryRecords:
    def __init__(self, table: MemoryTable, peer_id: str) -> None:
        self.table = table
        self.peer_id = peer_id

    def _put(self, family: str, r: int, rec: object) -> bool:
        self.table.rows.setdefault((family, r), {})[self.peer_id] = rec
        return True

    def _get(self, family: str, r: int) -> dict:  # type: ignore[type-arg]
        return dict(self.table.rows.get((family, r), {}))

    def publish_commit(self, round_: int, rec: CommitRecord) -> bool:
        return self._put("commits", round_, rec)

    def commits(self, round_: int) -> dict[str, CommitRecord]:
        return self._get("commits", round_)

    def publish_votes(self, round_: int, rec: VoteRecord) -> bool:
        return self._put("votes", round_, rec)

    def votes(self, round_: int) -> dict[str, VoteRecord]:
        return self._get("votes", round_)

    def publish_result(self, round_: int, rec: ResultRecord) -> bool:
        return self._put("results", round_, rec)

    def results(self, round_: int) -> dict[str, ResultRecord]:
        return self._get("results", round_)

    def peers(self) -> dict[str, PeerRecord]:
        return dict(self.table.peers)


class MemoryExchange:
    """Blobs served by each peer, fetched from the shared table (``blobs[(peer, kind, key)]``)."""

    def __init__(self, blobs: dict[tuple[str, str, str], object], peer_id: str) -> None:
        self.blobs = blobs
        self.peer_id = peer_id
        self.sent = self.received = 0
        self.fetched: list[tuple[str, str, str]] = []  # (peer, kind, digest) of every fetch tried

    def serve(self, kind: str, digest_hex: str, data: bytes) -> None:
        self.blobs[(self.peer_id, kind, digest_hex)] = data

    def serve_provider(self, kind: str, digest_hex: str, provider: Callable[[], bytes]) -> None:
        self.blobs[(self.peer_id, kind, digest_hex)] = provider

    def unserve(self, kind: str, digest_hex: str) -> bool:
        return self.blobs.pop((self.peer_id, kind, digest_hex), None) is not None

    def fetch(self, peer_id: str, kind: str, digest_hex: str, *, max_size: int, timeout: float,
              progress: Progress | None = None) -> bytes:
        self.fetched.append((peer_id, kind, digest_hex))
        blob = self.blobs.get((peer_id, kind, digest_hex))
        if blob is None:
            raise BlobNotFound(f"{peer_id} does not serve {kind} {digest_hex[:12]}", peer_id=peer_id)
        try:
            data = blob() if callable(blob) else blob
        except BlobNotReady as error:  # what the real server answers: "busy", retry later
            raise PeerBusy(f"{peer_id} is not serving {kind} {digest_hex[:12]} yet: {error}", peer_id=peer_id) from error
        assert isinstance(data, bytes)
        if len(data) > max_size:
            raise BlobTooLarge(f"{len(data)} > {max_size}", peer_id=peer_id)
        self.received += len(data)
        return data

    def fetch_future(self, peer_id: str, kind: str, digest_hex: str, *, max_size: int, timeout: float,
                     stall_timeout: float | None = None,
                     progress: Progress | None = None) -> concurrent.futures.Future[bytes]:
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        try:
            future.set_result(self.fetch(peer_id, kind, digest_hex, max_size=max_size, timeout=timeout))
        except Exception as error:  # noqa: BLE001 - handed to the caller through the future, as p2pd's are
            future.set_exception(error)
        return future

    def stats(self) -> ExchangeStats:
        return ExchangeStats(bytes_sent=self.sent, bytes_received=self.received, blobs_served=0,
                             blobs_fetched=0, requests_refused=0, fetches_failed=0, held_blobs=0, held_bytes=0)


@dataclass
class MemoryPeer:
    """One peer's round side: its context, engine, sync, trainer and state."""

    name: str
    ctx: RoundContext
    engine: RoundEngine
    sync: StateSync
    tracker: ProgressTracker
    contributor: Contributor
    state: ModelState
    lines: list[str]


def fake_peer_id(name: str) -> str:
    """A well-formed base58 peer id for ``name`` (records refuse anything else)."""
    return base58.b58encode(hashlib.sha256(name.encode()).digest()).decode()


def _nonce(work: IdentityWork | None, peer_id: str, fault: str | None) -> int:
    if work is None:
        return 0
    return unpaid_nonce(work, peer_id) if skips_work(fault) else work.solve(peer_id)


def memory_swarm(tmp: Path, config: SwarmConfig, names: list[str], *, faults: dict[str, str] | None = None,
                 genesis_time: float = 1000.0, founder: str | None = "first",
                 keep_payload_rounds: int = HISTORY_ROUNDS,
                 ) -> tuple[list[MemoryPeer], ManualClock, MemoryTable]:
    """Peers named ``names`` on one clock, shared records and blobs, all at the genesis,
    which the first of them created (``founder``: "first", another name, or None). In a
    swarm that prices identities (``config.vote.identity_bits``) each peer proves the
    work, except a ``free-identity`` one."""
    task: Task = load_task(config)
    clock = ManualClock(genesis_time)
    phases = PhaseClock(genesis_time, config.timing)
    table = MemoryTable()
    blobs: dict[tuple[str, str, str], object] = {}
    peers = []
    founder_id = fake_peer_id(names[0] if founder == "first" else founder) if founder else None
    bits = config.vote.identity_bits
    work = IdentityWork(hashlib.blake2b(b"memory genesis").digest(), bits) if bits else None
    for i, name in enumerate(names):
        peer_id = fake_peer_id(name)
        store = VersionStore(tmp / name / "versions")  # a data dir, as `swarmtrain log` reads it
        state = genesis_state(task, config)
        state.save(store, state.commit_for(parent=None, produced_in=0))
        lines: list[str] = []
        ctx = RoundContext(peer_id=peer_id, config=config, records=MemoryRecords(table, peer_id),
                           exchange=MemoryExchange(blobs, peer_id), store=store, clock=clock, phases=phases,
                           checker=Checker(task, config, heldout_seed=100 + i), founder=founder_id,
                           work=work, work_nonce=_nonce(work, peer_id, (faults or {}).get(name)),
                           announce=lines.append)
        sync = StateSync(ctx, keep_payload_rounds=keep_payload_rounds)
        sync.serve(state)
        trainer = LocalTrainer(task, config.train, stream_seed=i)
        peers.append(MemoryPeer(
            name=name, ctx=ctx, engine=RoundEngine(ctx, sync), sync=sync,
            tracker=ProgressTracker(trainer, state.params, state.version),
            contributor=Contributor(config, stream_seed=i, fault=(faults or {}).get(name)),
            state=state, lines=lines,
        ))
    return peers, clock, table


def lockstep_round(peers: list[MemoryPeer], clock: ManualClock, r: int, before: int, after: int,
                    after_votes: Callable[[], None] | None = None,
                    before_checks: Callable[[], None] | None = None) -> None:
    """Every peer through round ``r`` phase by phase: ``before`` steps up to the commit
    point, ``after`` more while the round is checked and merged (the overlap);
    ``before_checks`` runs at the commit deadline, before any peer freezes the round's
    commitments; ``after_votes`` once every peer has voted."""
    phases = peers[0].ctx.phases
    for p in peers:
        p.tracker.train(before)
    clock.sleep_until(phases.deadline(r, Phase.TRAIN) - PUBLISH_MARGIN_S)
    updates = {p.name: p.contributor.contribute(p.tracker.snapshot(), p.state.version) for p in peers}
    for p in peers:
        p.engine.commit(r, updates[p.name])
    clock.sleep_until(phases.deadline(r, Phase.COMMIT))
    if before_checks is not None:
        before_checks()
    verdicts = {p.name: p.engine.check_and_vote(r, p.state, updates[p.name]) for p in peers}
    if after_votes is not None:
        after_votes()
    for p in peers:
        p.tracker.train(after)
    clock.sleep_until(phases.deadline(r, Phase.VOTE))
    merged = {}
    for p in peers:
        decision, commits = p.engine.decide(r, p.state)
        merged[p.name] = p.engine.merge(r, p.state, decision, commits, verdicts[p.name])
    clock.sleep_until(phases.deadline(r, Phase.VOTE) + AGREE_READ_SHARE * peers[0].ctx.config.timing.agree_s)
    for p in peers:
        new, _ = p.sync.agree(r, p.state, merged[p.name])
        p.tracker.rebase(new.params, new.version)
        p.state = new
