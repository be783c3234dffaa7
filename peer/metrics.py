"""Prometheus metrics of one swarmtrain process (a peer or a bootstrap node).

``--metrics-port PORT`` serves them over HTTP (``/metrics``) from a registry of this
process's own, never prometheus-client's global one (which would also export the
interpreter's collectors and anything a library registers there). Without a port the
node still calls the same methods: they update an in-memory registry nobody reads,
a few microseconds per round, so the node needs no "is it on?" branches.

Label values are a small fixed set. Rejection reasons are free text, and the ones that
come from other peers' ballots are whatever those peers wrote: each maps to one of
:data:`REASON_CATEGORIES`, so a hostile peer cannot grow the number of series.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server

from swarmtrain.peer.store.versions import StoreError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from swarmtrain.dht import PeerRecord
    from swarmtrain.peer.round.engine import RoundSummary
    from swarmtrain.peer.store.commit import Contribution
    from swarmtrain.peer.store.versions import VersionStore
    from swarmtrain.peer.training.worker import WorkerStats

__all__ = ["BootstrapMetrics", "Metrics", "MetricsPortError", "PeerMetrics", "REASON_CATEGORIES", "reason_category",
           "recorded_contributions"]

# (category, words any of which in a reason put it there), first match wins. Ordered so
# that specific causes come before the generic "loss" and "norm" words.
_REASON_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # First: these name the reason of an earlier offence, whose words come after them.
    ("cooling_off", ("cooling off",)),
    ("no_work", ("no proof of work",)),
    ("near_copy", ("near-copy of",)),
    ("not_downloaded", ("not downloaded", "could not be fetched")),
    ("digest_mismatch", ("digest mismatch",)),
    ("stale_base", ("stale base",)),
    ("replayed", ("replayed",)),
    ("duplicate", ("duplicate of",)),
    ("over_cap", ("over the round's cap",)),
    ("sample_claim", ("samples, allowed",)),
    ("refused_at_merge", ("refused at merge",)),
    # validity.open_update's reasons: the payload does not open as this swarm's update.
    ("malformed", ("malformed", "unknown tensors", "shape of", "non-finite", "codec settings", "metadata")),
    ("empty", ("empty update",)),
    ("norm", ("norm ",)),
    ("loss", ("loss",)),
    ("majority", ("majority rejected",)),
)
REASON_CATEGORIES: tuple[str, ...] = (*(name for name, _ in _REASON_WORDS), "other", "unrecorded")


class MetricsPortError(RuntimeError):
    """The metrics port cannot be served (taken, or not ours to bind)."""


def reason_category(reason: str) -> str:
    """The bounded label value for a free-text rejection ``reason``."""
    text = reason.lower()
    for name, words in _REASON_WORDS:
        if any(word in text for word in words):
            return name
    return "other"


class _Totals:
    """Feeds cumulative totals read elsewhere (a heartbeat's byte counts) into Counters.

    A Counter only goes up by increments; the sources report running totals, so the
    difference to the last seen total is added. A total that goes down (a source that
    restarted) is taken as the new baseline.
    """

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}

    def advance(self, counter: Counter, total: float) -> None:
        last = self._seen.get(id(counter), 0.0)
        if total > last:
            counter.inc(total - last)
        self._seen[id(counter)] = total


class Metrics:
    """One process's registry and its HTTP endpoint; :class:`PeerMetrics` and
    :class:`BootstrapMetrics` add what each kind of node reports. Every method is cheap
    and safe to call while nothing is served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._totals = _Totals()
        self._info = Info("swarmtrain_node", "This process: role, peer id, swarm, software version",
                          registry=self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread (0: any free port)."""
        if not 0 <= port <= 65535:
            raise MetricsPortError(f"--metrics-port must be in [0, 65535], got {port}")
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise MetricsPortError(f"cannot serve metrics on {host}:{port} ({error.strerror}); "
                                   "pick another --metrics-port or stop what holds it") from error

    @property
    def port(self) -> int | None:
        """The port being served (None when not serving)."""
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def describe(self, *, role: str, peer_id: str, swarm: str, software: str) -> None:
        """Who this process is (one info series; the values do not change while it runs)."""
        self._info.info({"role": role, "peer_id": peer_id, "swarm": swarm, "software": software})


class PeerMetrics(Metrics):
    """What a training peer reports: its heartbeat and each round it plays."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.rounds = Counter("swarmtrain_rounds", "Rounds this peer played to the end", registry=r)
        self.round = Gauge("swarmtrain_round", "The round this peer is at (from its heartbeat)", registry=r)
        self.version = Gauge("swarmtrain_version", "1 for the model version this peer holds (first 12 hex digits)",
                             ["version"], registry=r)
        self.heldout_loss = Gauge("swarmtrain_heldout_loss", "Held-out loss of the version held (NaN: unknown)",
                                  registry=r)
        self.train_loss = Gauge("swarmtrain_train_loss", "Mean inner-step loss of the last committed update "
                                "(NaN: none yet)", registry=r)
        self.round_seconds = Gauge("swarmtrain_round_seconds", "Last round, commit point to adopted version",
                                   registry=r)
        self.utilisation = Gauge("swarmtrain_utilisation", "Share of wall time spent in inner steps", registry=r)
        self.samples_per_second = Gauge("swarmtrain_samples_per_second", "Training samples per second", registry=r)
        self.sent_bytes = Counter("swarmtrain_sent_bytes", "Bytes this peer served (updates and states)", registry=r)
        self.received_bytes = Counter("swarmtrain_received_bytes", "Bytes this peer fetched", registry=r)
        self.updates = Counter("swarmtrain_updates", "Updates judged in the rounds this peer played, by outcome "
                               "and reason category", ["outcome", "reason"], registry=r)
        self.own_updates = Counter("swarmtrain_own_updates", "This peer's own updates, by outcome", ["outcome"],
                                   registry=r)
        self.resyncs = Counter("swarmtrain_resyncs", "Times this peer downloaded the majority's state", registry=r)
        self.invalid_records = Counter("swarmtrain_invalid_records", "DHT entries skipped as malformed or mis-owned",
                                       registry=r)
        self.fetch_failures = Counter("swarmtrain_fetch_failures", "Payload or state downloads that failed",
                                      registry=r)
        self.heldout_loss.set(math.nan)
        self.train_loss.set(math.nan)

    def peer_status(self, record: PeerRecord, *, invalid_records: int, fetch_failures: int) -> None:
        """What the peer's heartbeat says (called with every heartbeat)."""
        self.round.set(record.round)
        self.version.clear()  # one series: the version held now
        self.version.labels(version=record.version_id[:12]).set(1)
        self.heldout_loss.set(math.nan if record.last_val_loss is None else record.last_val_loss)
        if record.last_round_s is not None:
            self.round_seconds.set(record.last_round_s)
        if record.utilisation is not None:
            self.utilisation.set(record.utilisation)
        if record.samples_per_s is not None:
            self.samples_per_second.set(record.samples_per_s)
        advance = self._totals.advance
        advance(self.sent_bytes, record.bytes_sent)
        advance(self.received_bytes, record.bytes_received)
        self._own_totals(record.updates_accepted, record.updates_rejected)
        advance(self.resyncs, record.resyncs)
        advance(self.invalid_records, invalid_records)
        advance(self.fetch_failures, fetch_failures)

    def _own_totals(self, accepted: int, rejected: int) -> None:
        self._totals.advance(self.own_updates.labels(outcome="accepted"), accepted)
        self._totals.advance(self.own_updates.labels(outcome="rejected"), rejected)

    def round_done(self, summary: RoundSummary, *, train_loss: float,
                   contributions: Iterable[Contribution] | None,
                   throughput: WorkerStats | None = None,
                   own_totals: tuple[int, int] | None = None) -> None:
        """One round played to the end. ``contributions``: what this peer's history records
        for the round (None when it holds no record of it, e.g. it downloaded the version):
        then only the counts are known and rejections go under "unrecorded". ``throughput``:
        the training worker's counters now. ``own_totals``: this peer's own updates accepted
        and rejected so far (running totals, as its heartbeat carries them)."""
        # Before the counter: a scrape that sees the round counted sees the round it led to
        # and the training behind it (the heartbeat sets the same values a moment later; a
        # scrape in between once saw rounds_total 1 with round 0, and later utilisation 0
        # from the heartbeat sent before the first step).
        self.round.set(summary.round + 1)
        if throughput is not None:
            self.utilisation.set(min(1.0, throughput.utilisation))
            self.samples_per_second.set(throughput.samples_per_second)
        # Its own outcome too: a scrape before the next heartbeat once saw rounds_total 1 and
        # own updates accepted 0 in a round that accepted every update.
        if own_totals is not None:
            self._own_totals(*own_totals)
        self.rounds.inc()
        if math.isfinite(train_loss):
            self.train_loss.set(train_loss)
        if summary.validation_loss is not None:
            self.heldout_loss.set(summary.validation_loss)
        if contributions is None:
            self.updates.labels(outcome="accepted", reason="accepted").inc(summary.accepted)
            self.updates.labels(outcome="rejected", reason="unrecorded").inc(summary.rejected)
            return
        for item in contributions:
            if item.accepted:
                self.updates.labels(outcome="accepted", reason="accepted").inc()
            else:
                self.updates.labels(outcome="rejected", reason=reason_category(item.reason)).inc()


class BootstrapMetrics(Metrics):
    """What a bootstrap node reports: its view of the DHT and of the swarm's clock."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.dht_peers = Gauge("swarmtrain_dht_peers", "DHT nodes in this node's routing table", registry=r)
        self.dht_stored_keys = Gauge("swarmtrain_dht_stored_keys", "DHT keys this node stores", registry=r)
        self.dht_refused_records = Counter("swarmtrain_dht_refused_records", "Records this node's validators refused "
                                           "(stores received and replies read)", registry=r)
        self.swarm_round = Gauge("swarmtrain_swarm_round", "The swarm's round by its genesis clock (NaN: no genesis "
                                 "seen yet)", registry=r)
        self.swarm_round.set(math.nan)

    def dht_status(self, *, peers: int, stored_keys: int, refused: int, swarm_round: int | None) -> None:
        """The node's DHT counters (``refused``: running total) and the swarm's round."""
        self.dht_peers.set(peers)
        self.dht_stored_keys.set(stored_keys)
        self._totals.advance(self.dht_refused_records, refused)
        self.swarm_round.set(math.nan if swarm_round is None else swarm_round)


def recorded_contributions(store: VersionStore, summary: RoundSummary) -> tuple[Contribution, ...] | None:
    """What this peer's history records of the round ``summary`` describes, or None when
    it holds no record of it: the version was downloaded (no contributions kept), or the
    round could not be resolved and the peer stayed on the version of an earlier round."""
    try:
        commit = store.commit(summary.version_id)
    except StoreError:
        return None
    if commit.round != summary.round or not commit.contributions:
        return None
    return commit.contributions
