"""``swarmtrain bootstrap``: the swarm's entry point, a DHT node with its record validators
and no model.

A stock ``hivemind-dht`` node bootstraps a swarm as well, but it stores whatever is
written to it: a forged commitment, a plain value that replaces every peer's heartbeat.
This node runs :func:`swarm_validators` (signatures, owner markers, schemas) and refuses
them, so the node everyone dials first is not the one that spreads forgeries. It needs
no torch model and no GPU: a small public server runs it.

Round records are validated for a window of rounds (dht/validator.py). A peer moves its
window as it plays; this node follows the swarm's clock instead: it reads the genesis
(the first one it sees, kept, so a back-dated candidate written later cannot shift it)
and reads the current round's results, which moves the window (dht/records.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hivemind
from hivemind.dht.validation import DHTRecord, RecordValidatorBase

from swarmtrain.dht import (DHTTimeoutError, GenesisRecord, SwarmRecords, is_loopback_host, load_or_create_identity,
                            start_dht, visible_maddrs)
from swarmtrain.dht.nat import NatOptions
from swarmtrain.peer.metrics import BootstrapMetrics
from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.round.clock import PhaseClock
from swarmtrain.peer.store.files import atomic_write

log = logging.getLogger(__name__)

SOFTWARE = "swarmtrain 0.1.0"
# How often the node reads its DHT's counters and follows the swarm's round. A round
# lasts tens of seconds, and the validator window reaches 256 rounds ahead.
REFRESH_S = 5.0


@dataclass(frozen=True, kw_only=True)
class BootstrapOptions:
    swarm: str
    data_dir: Path
    initial_peers: tuple[str, ...] = ()  # other bootstrap nodes, to chain them
    host: str = "127.0.0.1"
    port: int = 0
    nat: NatOptions = field(default_factory=NatOptions)  # its announce: the addresses others dial
    address_file: Path | None = None
    allowed_peers: frozenset[str] | None = None  # --allow-peers: a private swarm's members
    metrics: BootstrapMetrics = field(default_factory=BootstrapMetrics)
    say: Callable[[str], None] = print


class _CountingValidator(RecordValidatorBase):
    """Wraps a DHT node's validator to count the records it refuses (inside the DHT process).

    Installed by :func:`_count_refusals` in place of the node's composite validator; every
    call goes to the wrapped one, ``extend`` included (how add_validators moves windows).
    """

    def __init__(self, inner: RecordValidatorBase) -> None:
        self.inner = inner
        self.refused = 0

    def validate(self, record: DHTRecord) -> bool:
        ok = self.inner.validate(record)
        self.refused += int(not ok)
        return ok

    def sign_value(self, record: DHTRecord) -> bytes:
        return self.inner.sign_value(record)

    def strip_value(self, record: DHTRecord) -> bytes:
        return self.inner.strip_value(record)

    @property
    def priority(self) -> int:
        return self.inner.priority

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return self.inner.merge_with(other)

    def extend(self, validators: object) -> None:
        self.inner.extend(validators)  # type: ignore[attr-defined]


async def _count_refusals(_dht: hivemind.DHT, node: hivemind.DHTNode) -> None:
    # Runs in the DHT process (module level: pickled by name). DHTNode and its _SearchState
    # objects read the validator through node.protocol, so replacing it there covers stores
    # received and replies read.
    node.protocol.record_validator = _CountingValidator(node.protocol.record_validator)


async def _dht_counts(_dht: hivemind.DHT, node: hivemind.DHTNode) -> tuple[int, int, int]:
    """(nodes in the routing table, keys stored, records refused so far), in the DHT process."""
    validator = node.protocol.record_validator
    refused = validator.refused if isinstance(validator, _CountingValidator) else 0
    return len(node.protocol.routing_table.uid_to_peer_id), len(node.protocol.storage), refused


class BootstrapNode:
    """A started bootstrap node; :meth:`run` serves until interrupted, :meth:`close` leaves."""

    def __init__(self, options: BootstrapOptions) -> None:
        self.options = options
        self.identity = load_or_create_identity(options.data_dir)
        self.dht = start_dht(initial_peers=list(options.initial_peers), identity=self.identity,
                             swarm=options.swarm, host=options.host, port=options.port, nat=options.nat,
                             allowed_peers=options.allowed_peers)
        try:
            self.dht.run_coroutine(_count_refusals)
            self.records = SwarmRecords(self.dht, self.identity, options.swarm, allowed=options.allowed_peers)
            # Announced addresses are what others dial; otherwise, as for a peer, a node
            # listening beyond loopback lists those addresses first.
            loopback = is_loopback_host(options.host) and not options.nat.announce
            self.addresses = visible_maddrs(self.dht, loopback=loopback)
        except BaseException:
            self.close()
            raise
        self.genesis: GenesisRecord | None = None
        self._phases: PhaseClock | None = None

    def announce_ready(self) -> None:
        """Print the node's addresses (and write --address-file) for peers to join with."""
        say = self.options.say
        say(f"bootstrap node {self.identity.peer_id} for swarm {self.options.swarm!r} "
            "(DHT records only, validated; no model)")
        if self.options.address_file is not None:
            atomic_write(self.options.address_file, "".join(f"{a}\n" for a in self.addresses).encode())
        for address in self.addresses:
            say(f"join with: --initial-peers {address}")
        self.options.metrics.describe(role="bootstrap", peer_id=self.identity.peer_id, swarm=self.options.swarm,
                                      software=SOFTWARE)

    def refresh(self) -> None:
        """Follow the swarm's round (moves the validator window) and update the metrics."""
        swarm_round = self._follow_rounds()
        peers, keys, refused = self.dht.run_coroutine(_dht_counts)
        self.options.metrics.dht_status(peers=peers, stored_keys=keys, refused=refused, swarm_round=swarm_round)

    def _follow_rounds(self) -> int | None:
        if self._phases is None:
            genesis = self.records.read_genesis()
            if genesis is None:
                return None
            try:
                timing = SwarmConfig.from_dict(genesis.config).timing
            except (ValueError, TypeError) as error:  # peers refuse such a genesis too (node.check_genesis)
                log.warning("genesis %s holds unreadable settings (%s); not following its rounds",
                            genesis.digest()[:12], error)
                return None
            self.genesis, self._phases = genesis, PhaseClock(genesis.genesis_time, timing)
            self.options.say(f"swarm {self.options.swarm!r} has genesis {genesis.digest()}: "
                             "validating its rounds as they come")
        now = self._phases.training_round(time.time())
        self.records.results(now)  # a read of round `now` slides the validator's window to it
        return now

    def run(self) -> None:
        """Serve until Ctrl-C or SIGTERM (KeyboardInterrupt)."""
        self.announce_ready()
        while True:
            try:
                self.refresh()
            except DHTTimeoutError as error:  # a slow DHT costs this refresh, not the node
                log.warning("bootstrap refresh: %s", error)
            time.sleep(REFRESH_S)

    def close(self) -> None:
        """Leave the DHT (safe to call twice)."""
        if self.dht is not None:
            self.dht.shutdown()
            self.dht = None  # type: ignore[assignment]


def run_bootstrap(options: BootstrapOptions) -> int:
    """``swarmtrain bootstrap``: start, serve until interrupted, leave; 0 on a clean stop."""
    node = BootstrapNode(options)
    try:
        node.run()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into this): the normal end
        options.say("bootstrap node stopped")
    finally:
        node.close()
    return 0
