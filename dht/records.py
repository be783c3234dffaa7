"""Read and write a swarm's records on a running DHT node.

Every key holds a dictionary of per-peer entries: the subkey is the writer's owner marker
(so hivemind's RSA validator lets only that peer write it) and the value is a record's
wire dict. Reads return ``{peer id: record}`` where the peer id is the one derived from the
marker, which the record's own peer-id field must equal (validator.parse_entry), so a
returned entry always speaks for the peer it is keyed by.

Reads never raise on bad data: an entry that fails its schema or ownership is skipped and
counted in :attr:`SwarmRecords.invalid_records`. Normally the DHT process has already
refused such entries; they still reach a reader when they were stored before the
validator's round window covered their key (see validator.py), so the check here is the
one that always holds.

The genesis: two peers may start the same swarm at once. Each writes its candidate under
its own subkey; the genesis is the entry with the earliest ``genesis_time`` (ties: the
smaller creator id, then the smaller digest), a rule every reader applies to the same set.
Peers that adopt a genesis re-publish it under their own subkey, so it outlives its
creator.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import hivemind
from hivemind.utils import get_dht_time

from swarmtrain.dht.identity import Identity
from swarmtrain.dht.keys import KeyFamily, round_key, static_key, validate_round, validate_swarm_name
from swarmtrain.dht.schemas import (
    CommitRecord,
    GenesisRecord,
    PeerRecord,
    ResultRecord,
    SwarmRecord,
    VoteRecord,
)
from swarmtrain.dht.validator import InvalidRecordError, SwarmRecordValidator, parse_entry, round_window

__all__ = ["DHTTimeoutError", "GenesisNotStoredError", "RecordOwnershipError", "RecordTTLs", "SwarmRecords"]

RecordT = TypeVar("RecordT", bound=SwarmRecord)

# Move the validator's window when fewer than this many covered rounds remain ahead.
_WINDOW_MARGIN = 32
# Keep at most this many per-key "last expiration" entries before dropping expired ones.
_MAX_TRACKED_KEYS = 1024


class DHTTimeoutError(TimeoutError):
    """The DHT process did not answer in time."""


class GenesisNotStoredError(RuntimeError):
    """A genesis candidate was published but could not be read back."""


class RecordOwnershipError(ValueError):
    """A record to publish names a peer other than this node (every node would refuse it)."""


@dataclass(frozen=True, kw_only=True)
class RecordTTLs:
    """How long each kind of record lives, in seconds (re-publish before it runs out)."""

    genesis: float = 24 * 3600.0  # re-published by every peer that adopted it
    heartbeat: float = 60.0  # a peer that stops beating drops out of peers() within this
    round: float = 3600.0  # commits, votes, results: read by late joiners for a while

    def __post_init__(self) -> None:
        for name in ("genesis", "heartbeat", "round"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 1.0 <= value <= 30 * 24 * 3600.0:
                raise ValueError(f"RecordTTLs.{name} must be between 1 s and 30 days, got {value!r}")


class SwarmRecords:
    """The swarm's records on ``dht``, written as ``identity``.

    Calls block until the DHT process answers (at most ``timeout`` seconds, else
    DHTTimeoutError). ``publish_*`` return hivemind's store flag, which only says that some
    replica accepted the entry (docs/hivemind.md); read back to be sure.
    """

    def __init__(
        self,
        dht: hivemind.DHT,
        identity: Identity,
        swarm: str,
        *,
        ttls: RecordTTLs = RecordTTLs(),
        timeout: float = 30.0,
        allowed: frozenset[str] | None = None,
    ) -> None:
        self._dht = dht
        self._identity = identity
        self._swarm = validate_swarm_name(swarm)
        self._allowed = allowed  # a private swarm's members (allowlist.py); None: anyone
        self._ttls = ttls
        self._timeout = timeout
        self._invalid_records = 0
        self._last_expiration: dict[str, float] = {}
        self._window = range(0)  # rounds this object has asked the DHT's validator to cover

    @property
    def swarm(self) -> str:
        """The swarm these records belong to."""
        return self._swarm

    @property
    def peer_id(self) -> str:
        """This node's peer id: the key of its own entries in every read."""
        return self._identity.peer_id

    @property
    def invalid_records(self) -> int:
        """How many entries reads have skipped as malformed or mis-owned, since creation."""
        return self._invalid_records

    # --- genesis ---------------------------------------------------------------------

    def publish_genesis(self, rec: GenesisRecord) -> bool:
        """Write (or endorse: re-publish someone's) genesis candidate under our subkey."""
        if rec.swarm != self._swarm:
            raise RecordOwnershipError(f"genesis is for swarm {rec.swarm!r}, these records are for {self._swarm!r}")
        return self._publish(static_key(self._swarm, KeyFamily.GENESIS), rec, self._ttls.genesis)

    def genesis_candidates(self) -> list[GenesisRecord]:
        """Every distinct valid genesis candidate, the winner first (see the module docstring)."""
        entries = self._read(static_key(self._swarm, KeyFamily.GENESIS), KeyFamily.GENESIS, GenesisRecord)
        distinct = {rec.digest(): rec for rec in entries.values()}
        return sorted(distinct.values(), key=GenesisRecord.order_key)

    def read_genesis(self, *, pin: str | None = None) -> GenesisRecord | None:
        """The swarm's genesis, or None if nobody has written one.

        ``pin``: the digest of the genesis this peer adopted earlier (kept in its data dir);
        with it, only that genesis is returned, so a later, back-dated candidate cannot
        take a running peer over (see the module docstring of records.py).
        """
        for candidate in self.genesis_candidates():
            if pin is None or candidate.digest() == pin:
                return candidate
        return None

    def establish_genesis(self, candidate: GenesisRecord, *, settle_s: float = 2.0) -> GenesisRecord:
        """Start or join the swarm's genesis: the winner after ``candidate`` has been offered.

        If a genesis exists, endorse and return it. Otherwise publish ``candidate``, wait
        ``settle_s`` for a concurrent starter's candidate to arrive, and return the winner
        (endorsing it if it is not ours). Two starters agree as long as each one's store
        reaches the other within ``settle_s``.
        """
        existing = self.read_genesis()
        if existing is None:
            self.publish_genesis(candidate)
            time.sleep(settle_s)
            existing = self.read_genesis()
            if existing is None:  # our own store did not stick anywhere
                raise GenesisNotStoredError(
                    "the genesis candidate did not stay in the DHT, not even on this node; "
                    "check that the node is running and its clock is right (expirations are absolute times)"
                )
        if existing.digest() != candidate.digest():
            self.publish_genesis(existing)
        return existing

    # --- heartbeats ------------------------------------------------------------------

    def heartbeat(self, rec: PeerRecord) -> bool:
        """Publish this peer's status; it expires after ``ttls.heartbeat`` seconds."""
        return self._publish(static_key(self._swarm, KeyFamily.PEERS), rec, self._ttls.heartbeat)

    def peers(self) -> dict[str, PeerRecord]:
        """The live heartbeats, by peer id."""
        return self._read(static_key(self._swarm, KeyFamily.PEERS), KeyFamily.PEERS, PeerRecord)

    # --- rounds ----------------------------------------------------------------------

    def publish_commit(self, round_: int, rec: CommitRecord) -> bool:
        """Publish this peer's commitment for ``round_``."""
        return self._publish(self._round_key(KeyFamily.COMMITS, round_), rec, self._ttls.round)

    def commits(self, round_: int) -> dict[str, CommitRecord]:
        """The commitments of ``round_``, by peer id."""
        return self._read(self._round_key(KeyFamily.COMMITS, round_), KeyFamily.COMMITS, CommitRecord)

    def publish_votes(self, round_: int, rec: VoteRecord) -> bool:
        """Publish this peer's verdicts for ``round_``."""
        return self._publish(self._round_key(KeyFamily.VOTES, round_), rec, self._ttls.round)

    def votes(self, round_: int) -> dict[str, VoteRecord]:
        """The ballots of ``round_``, by voter peer id."""
        return self._read(self._round_key(KeyFamily.VOTES, round_), KeyFamily.VOTES, VoteRecord)

    def publish_result(self, round_: int, rec: ResultRecord) -> bool:
        """Publish the version this peer computed at the end of ``round_``."""
        return self._publish(self._round_key(KeyFamily.RESULT, round_), rec, self._ttls.round)

    def results(self, round_: int) -> dict[str, ResultRecord]:
        """The versions peers computed at the end of ``round_``, by peer id."""
        return self._read(self._round_key(KeyFamily.RESULT, round_), KeyFamily.RESULT, ResultRecord)

    # --- internals -------------------------------------------------------------------

    def _round_key(self, family: KeyFamily, round_: int) -> str:
        validate_round(round_)
        self._cover(round_)
        return round_key(self._swarm, family, round_)

    def _cover(self, round_: int) -> None:
        # The DHT process's validator knows our per-round keys only for a window of rounds;
        # slide it before touching a round near or past its end. One add_validators call
        # (~40 ms round trip, a ~130-byte pickle) every ~200 rounds.
        if round_ in self._window and round_ + _WINDOW_MARGIN < self._window.stop:
            return
        window = round_window(round_)
        self._dht.add_validators([SwarmRecordValidator(self._swarm, window, self._allowed)])
        self._window = window

    def _publish(self, key: str, rec: SwarmRecord, ttl: float) -> bool:
        claimed = rec.owner_peer_id
        if claimed is not None and claimed != self._identity.peer_id:
            raise RecordOwnershipError(
                f"{type(rec).__name__} names peer {claimed}, but this node signs as {self._identity.peer_id}; "
                "every validating node would refuse it"
            )
        future = self._dht.store(
            key,
            rec.to_wire(),
            self._next_expiration(key, ttl),
            subkey=self._identity.owner_marker,
            return_future=True,
        )
        return bool(self._wait(future, f"store {key}"))

    def _read(self, key: str, family: KeyFamily, model: type[RecordT]) -> dict[str, RecordT]:
        # ``model`` only types the result: parse_entry picks the schema from ``family``.
        found = self._wait(self._dht.get(key, latest=True, return_future=True), f"get {key}")
        if found is None:
            return {}
        if not isinstance(found.value, dict):  # a plain value where per-peer entries belong
            self._invalid_records += 1
            return {}
        out: dict[str, RecordT] = {}
        for subkey, item in found.value.items():
            try:
                # In a private swarm the DHT process refuses strangers' entries already;
                # the reader's second look (allowed) costs nothing.
                owner, rec = parse_entry(family, subkey, item.value, swarm=self._swarm, allowed=self._allowed)
            except InvalidRecordError:
                self._invalid_records += 1
                continue
            out[owner] = cast(RecordT, rec)  # parse_entry chose the model from ``family``
        return out

    def _next_expiration(self, key: str, ttl: float) -> float:
        # A store with an earlier expiration than the live entry's is refused *and* deletes
        # the live entry at that earlier time (docs/hivemind.md): never go backwards, even
        # if the clock does or the TTL shrinks.
        now = get_dht_time()
        expiration = max(now + ttl, self._last_expiration.get(key, 0.0) + 1e-3)
        if len(self._last_expiration) >= _MAX_TRACKED_KEYS:
            self._last_expiration = {k: t for k, t in self._last_expiration.items() if t > now}
        self._last_expiration[key] = expiration
        return expiration

    def _wait(self, future: concurrent.futures.Future[Any], what: str) -> Any:
        try:
            return future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError as error:
            future.cancel()
            raise DHTTimeoutError(
                f"the DHT did not answer '{what}' within {self._timeout:.0f} s; is the DHT process alive?"
            ) from error
