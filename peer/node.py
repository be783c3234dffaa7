"""A running peer: joins the DHT, agrees on the genesis, then plays rounds until told to stop.

Threads: the main thread trains, checks and merges; hivemind's DHT runs in its own child
process; the blob exchange runs an event loop in a thread (:mod:`exchange`). Everything
a round needs from other peers comes from signed DHT records (:mod:`swarmtrain.dht`) and
from payloads whose digests those records commit to.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


from swarmtrain.dht import (DHTTimeoutError, GenesisRecord, PeerRecord, SwarmRecords, ValidationError,
                            is_loopback_host, load_or_create_identity, start_dht, visible_maddrs)
from swarmtrain.dht.nat import NatOptions
from swarmtrain.peer.metrics import PeerMetrics, recorded_contributions
from swarmtrain.dht.schemas import LOSS_TREND_LEN
from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.exchange.service import Exchange, ExchangeConfig
from swarmtrain.peer.basemodel import BaseFetchError, fetch_base, serve_base
from swarmtrain.peer.round.check import Checker
from swarmtrain.peer.round.clock import Clock, Phase, PhaseClock, SystemClock
from swarmtrain.peer.round.context import RoundContext
from swarmtrain.peer.round.copies import copycat_source
from swarmtrain.peer.round.engine import AGREE_READ_SHARE, PUBLISH_MARGIN_S, RoundEngine, RoundSummary
from swarmtrain.peer.round.state import ModelState, genesis_state, load_version
from swarmtrain.peer.round.pin import PinnedVersion
from swarmtrain.peer.round.sync import StateSync
from swarmtrain.peer.store.files import atomic_write
from swarmtrain.peer.store.payloads import HISTORY_ROUNDS
from swarmtrain.peer.store.versions import StoreError, VersionStore
from swarmtrain.peer.training import faults
from swarmtrain.peer.training.contribute import Contributor
from swarmtrain.peer.training.localstate import LocalStateError
from swarmtrain.peer.training.progress import ProgressTracker, carries_progress
from swarmtrain.peer.training.tasks import BUILTIN_TASKS, HF_PREFIX, load_task
from swarmtrain.peer.training.trainer import LocalTrainer, resolve_device
from swarmtrain.peer.training.worker import TrainingWorker
from swarmtrain.protocol.work import IdentityWork

log = logging.getLogger(__name__)

# v2: rounds are pipelined (a commit point every train_s, each round's exchange while the
# next one trains); a v1 genesis times its rounds differently.
PROTOCOL_VERSION = 2
SOFTWARE_VERSION = "swarmtrain 0.1.0"
# After (re)joining, a peer commits in a round only with at least this share of its
# training window left; otherwise it trains on and commits in the next (a weak update
# made in a few seconds is not worth the swarm's checks).
MIN_TRAIN_SHARE = 0.5


class JoinError(RuntimeError):
    """This peer cannot join the swarm as configured; the message says what to change."""


# How long after the commit deadline a ``late-commit`` peer publishes its commitment.
LATE_COMMIT_S = 0.5


@dataclass(frozen=True, kw_only=True)
class NodeOptions:
    """What differs per peer (the swarm's shared settings come from the genesis)."""

    swarm: str
    data_dir: Path
    initial_peers: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    rounds: int | None = None          # leave after contributing to this many rounds
    fault: str | None = None
    config: SwarmConfig | None = None  # settings this peer insists on (None: adopt the genesis)
    new_swarm_config: SwarmConfig = field(default_factory=SwarmConfig)
    start_delay: float = 0.0           # a new swarm's round 0 starts this many seconds later
    # After its last round a leaving peer stays up this long, so that watchers (`status
    # --watch`, the demo's view) read its final heartbeat and a lagging peer can still
    # fetch the final state from it, before its DHT node and p2pd go away.
    linger_s: float = 4.0
    # Where to write the addresses others join with, one per line, once the peer is ready
    # (for scripts and compose files that start the next peers from it).
    address_file: Path | None = None
    device: str = "auto"               # where the inner steps run (see trainer.resolve_device)
    inner_optim: str = "adamw"         # --inner-optim: adamw, adamw8bit (a quarter of the state), wide-adamw
    # The digest of the genesis to join (what `join` prints as "genesis ..."): with it, no
    # other candidate, a back-dated one included, can capture this peer.
    genesis_digest: str | None = None
    trust_states: bool = False         # --trust-state: take a state that cannot be replayed on its holders' word
    trust_version: PinnedVersion | None = None  # --trust-version: replay from this version when nothing older works
    fetch_base: bool = False           # --fetch-base: an hf: model directory without weights gets them from peers
    keep_payload_rounds: int = HISTORY_ROUNDS  # --keep-payloads: rounds of merged payloads kept for others' replay
    data: tuple[Path, ...] = ()        # this peer's text files for an hf: task (--data)
    nat: NatOptions = field(default_factory=NatOptions)  # relays, hole punching, announced addresses
    # --allow-peers: a private swarm's members (records and blobs of nobody else); None: open
    allowed_peers: frozenset[str] | None = None
    metrics: PeerMetrics = field(default_factory=PeerMetrics)  # served by the caller when --metrics-port is given
    announce: Callable[[str], None] = print
    clock: Clock = field(default_factory=SystemClock)


class Node:
    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.expanduser().resolve()
        self.identity = load_or_create_identity(self.data_dir)
        allowed = options.allowed_peers
        if allowed is not None and self.identity.peer_id not in allowed:
            raise JoinError(f"this peer ({self.identity.peer_id}) is not on the --allow-peers list: add its id "
                            "to the file on every member, or it will refuse its own records")
        self.dht = start_dht(initial_peers=list(options.initial_peers), identity=self.identity,
                             swarm=options.swarm, host=options.host, port=options.port, nat=options.nat,
                             allowed_peers=allowed)
        self.exchange: Exchange | None = None
        self.store: VersionStore | None = None
        self.resumed = False  # this data dir held a version beyond the genesis
        try:
            self.records = SwarmRecords(self.dht, self.identity, options.swarm, allowed=allowed)
            # A peer listening beyond loopback is for other machines: their addresses first.
            self.addresses = visible_maddrs(self.dht, loopback=is_loopback_host(options.host))
            self.exchange = Exchange.start(self.dht, ExchangeConfig(allowed_peers=allowed))
            self.genesis = self._establish_genesis()
            self.config = check_genesis(self.genesis, insisted=self.options.config)  # hf: this machine's path
            if self.config.task.startswith(HF_PREFIX):
                self.config = self._base_weights(self.config)
            self.phases = PhaseClock(self.genesis.genesis_time, self.config.timing)
            self.store = VersionStore(self.data_dir / "versions")
            self.task = load_task(self.config, data=self.options.data)
            self.state = self._initial_state()
            seed = int.from_bytes(self.identity.peer_id.encode()[-6:], "big")
            self.contributor = Contributor(self.config, stream_seed=seed, fault=options.fault)
            self.trainer = LocalTrainer(self.task, self.config.train, stream_seed=seed,
                                        device=resolve_device(options.device), inner_optim=options.inner_optim)
            self._load_local_state()
            self.checker = Checker(self.task, self.config, heldout_seed=seed + 1)
            work, nonce = self._identity_work()
            self.context = RoundContext(
                peer_id=self.identity.peer_id, config=self.config, records=self.records, exchange=self.exchange,
                store=self.store, clock=options.clock, phases=self.phases, checker=self.checker,
                founder=self.genesis.creator, work=work, work_nonce=nonce, announce=options.announce)
            self.sync = StateSync(self.context, trust_states=self.options.trust_states,
                                  pinned=self.options.trust_version,
                                  keep_payload_rounds=self.options.keep_payload_rounds)
            self.sync.serve(self.state)
            self.engine = RoundEngine(self.context, self.sync, fault=options.fault)
            self.worker: TrainingWorker | None = None
            self._losses: dict[bytes, float] = {}  # held-out loss by version, for the heartbeat's trend
        except BaseException:
            self.close()
            raise

    # --- start-up --------------------------------------------------------------------

    def _base_weights(self, config: SwarmConfig) -> SwarmConfig:
        """An hf: swarm's base weights: with --fetch-base and a model directory without
        them, fetched from the peers and verified against the genesis (the task then reads
        them from this data dir's copy); either way served to joiners that have only the
        config. Returns the config the task is built from."""
        from swarmtrain.peer.training.tasks.hf import has_weights, model_dir

        assert self.exchange is not None
        path = model_dir(config.task)
        if has_weights(path) or not self.options.fetch_base:
            serve_base(self.exchange, path, self.genesis.initial_checksum)
            return config

        def verify(candidate: Path) -> str | None:
            trial = config.replace(task=f"{HF_PREFIX}{candidate}")
            checksum = genesis_state(load_task(trial), trial).checksum.hex()
            if checksum == self.genesis.initial_checksum:
                return None
            return f"the model built from them has checksum {checksum[:12]}, the genesis pins " \
                   f"{self.genesis.initial_checksum[:12]}"
        try:
            fetched = fetch_base(self.exchange, self._peers_to_ask(), self.genesis.initial_checksum, path,
                                 self.data_dir, verify, self.options.announce)
        except BaseFetchError as error:
            raise JoinError(str(error)) from error
        serve_base(self.exchange, fetched, self.genesis.initial_checksum)
        return config.replace(task=f"{HF_PREFIX}{fetched}")

    def _peers_to_ask(self, wait_s: float = 30.0) -> list[str]:
        """Other peers of the swarm by their heartbeats, waiting up to ``wait_s`` for one."""
        clock = self.options.clock
        until = clock.time() + wait_s
        while True:
            others = sorted(p for p in self.records.peers() if p != self.identity.peer_id)
            if others or clock.time() >= until:
                return others
            clock.sleep_until(clock.time() + 1.0)

    def _identity_work(self) -> tuple[IdentityWork | None, int]:
        """The swarm's price of an identity, and this peer's proof of it (found once per
        start: about 2^bits hashes, a second at 20 bits)."""
        bits = self.config.vote.identity_bits
        if not bits:
            return None, 0
        work = IdentityWork(bytes.fromhex(self.genesis.digest()), bits)
        if faults.skips_work(self.options.fault):
            return work, faults.unpaid_nonce(work, self.identity.peer_id)
        started = time.monotonic()
        nonce = work.solve(self.identity.peer_id)
        self.options.announce(f"proof of work on this identity ({bits} bits): {time.monotonic() - started:.1f} s")
        return work, nonce

    def _establish_genesis(self) -> GenesisRecord:
        """Join the existing genesis, or propose ours when the swarm has none."""
        pin = self._read_pin()
        pinned = None if pin is None else str(pin["digest"])
        wanted = self.options.genesis_digest
        if wanted is not None and pinned is not None and wanted != pinned:
            raise JoinError(f"this data dir joined the swarm with genesis {pinned}, not --genesis {wanted}; "
                            "use a new --data-dir to join another genesis")
        pinned = pinned or wanted
        existing = self.records.read_genesis(pin=pinned)
        if existing is None and self.options.initial_peers:
            # The swarm may still be starting (or the bootstrap is a plain hivemind node):
            # give a concurrent starter a moment before proposing a genesis of our own.
            deadline = time.monotonic() + 3.0
            while existing is None and time.monotonic() < deadline:
                time.sleep(0.5)
                existing = self.records.read_genesis(pin=pinned)
        if existing is None and pin is not None:
            existing = self._pinned_record(pin)  # published below, like any endorsement
        if existing is None and wanted is not None:
            raise JoinError(f"no genesis with digest {wanted} in swarm {self.options.swarm!r} (is the digest "
                            "complete, and are --swarm and --initial-peers the swarm's?)")
        if existing is None:
            config = self.options.config or self.options.new_swarm_config
            candidate = GenesisRecord(
                protocol_version=PROTOCOL_VERSION, swarm=self.options.swarm, task=config.task,
                config=config.to_dict(), initial_checksum=_initial_checksum(config).hex(),
                genesis_time=time.time() + self.options.start_delay, creator=self.identity.peer_id,
            )
            existing = self.records.establish_genesis(candidate)
        else:
            self.records.publish_genesis(existing)  # endorse, so it outlives its creator
        check_genesis(existing, insisted=self.options.config)
        atomic_write(self.data_dir / "genesis.json",
                     json.dumps({"digest": existing.digest(), "record": existing.to_wire()}).encode())
        self.options.announce(f"genesis {existing.digest()} (others may pin it: --genesis {existing.digest()})")
        return existing

    def _read_pin(self) -> dict[str, object] | None:
        """What genesis.json says of the genesis this data dir adopted (None: a new data dir)."""
        path = self.data_dir / "genesis.json"
        if not path.exists():
            return None
        try:
            pin = json.loads(path.read_text())
            str(pin["digest"])
            return dict(pin)
        except (ValueError, KeyError, TypeError) as error:
            raise JoinError(f"{path} is damaged ({error}); delete it to rejoin the swarm") from error

    def _pinned_record(self, pin: dict[str, object]) -> GenesisRecord:
        """The swarm's genesis left the DHT with its last peer: restore the pinned one.

        Every peer of a stopped swarm pins the same genesis, so the first one back restores
        it and the swarm resumes from the versions its peers kept (round numbers go on from
        the genesis time). A pin without the record (older data dirs) cannot do this.
        """
        try:
            record = GenesisRecord.model_validate(pin.get("record"))
        except ValidationError:
            record = None
        if record is None or record.digest() != pin["digest"] or record.swarm != self.options.swarm:
            raise JoinError(f"this data dir belongs to a swarm whose genesis is no longer in the DHT, and it "
                            f"keeps no copy to restore it from; use a new --data-dir to start or join "
                            f"{self.options.swarm!r} afresh")
        self.options.announce(f"the genesis of {self.options.swarm!r} was no longer in the DHT: restored the one "
                              "this data dir pins, resuming from its versions")
        return record

    def _initial_state(self) -> ModelState:
        """The genesis version, or the version this data dir holds from an earlier run."""
        assert self.store is not None
        genesis = genesis_state(self.task, self.config)
        checksum = genesis.checksum.hex()
        if checksum != self.genesis.initial_checksum and self.config.task.startswith(HF_PREFIX):
            from swarmtrain.peer.training.tasks.hf import has_weights, model_dir

            hint = ("" if has_weights(model_dir(self.config.task))
                    else ", or join with --fetch-base to download the weights from the swarm's peers")
            raise JoinError(f"your model directory differs from the swarm's (checksum {checksum[:12]} vs "
                            f"{self.genesis.initial_checksum[:12]}); use the swarm's model files (config and weights)"
                            + hint)
        if checksum != self.genesis.initial_checksum:
            raise JoinError(f"this machine builds a different initial model for task {self.config.task!r} "
                            f"(checksum {checksum[:12]} vs the genesis' {self.genesis.initial_checksum[:12]}); "
                            "use the same swarmtrain and torch versions as the swarm")
        head = self.store.head()
        if head is not None and head.version_id != genesis.version.hex():
            state = load_version(self.store, head.version_id, genesis.outer, next_round=head.round + 1)
            self.options.announce(f"resuming from version {head.version_id[:12]} (round {state.round})")
            self.resumed = True
            return state
        if head is None:
            genesis.save(self.store, genesis.commit_for(parent=None, produced_in=0))
        return genesis

    def _local_state(self) -> list[tuple[str, str, Callable[[], bytes], Callable[[bytes], None]]]:
        """This peer's own state kept across restarts: (file, what, save, restore)."""
        shapes = {name: t.shape for name, t in self.state.params.items()}
        feedback, trainer = self.contributor.feedback, self.trainer
        return [
            ("feedback.safetensors", "error-feedback residual", feedback.to_bytes,
             lambda data: feedback.load_bytes(data, shapes)),
            ("inner-optimizer.safetensors", "inner AdamW state", trainer.optimizer_bytes,
             trainer.load_optimizer_bytes),
        ]

    def _load_local_state(self) -> None:
        """Restore what an earlier run of this peer saved, each part only if it fits."""
        for file, what, _, restore in self._local_state():
            path = self.data_dir / file
            if not path.exists():
                continue
            try:
                restore(path.read_bytes())
            except (OSError, LocalStateError) as error:
                self.options.announce(f"starting with an empty {what}: {error}")

    def _save_local_state(self) -> None:
        """Crash-safe; a failure costs that state on restart, never the round."""
        assert self.worker is not None
        for file, what, save, _ in self._local_state():
            data = self.worker.exclusive(save)  # between two inner steps
            assert isinstance(data, bytes)
            try:
                atomic_write(self.data_dir / file, data)
            except StoreError as error:
                log.warning("could not save the %s: %s", what, error)

    # --- running ---------------------------------------------------------------------

    def run(self) -> list[RoundSummary]:
        """Play rounds until ``options.rounds`` contributions are done (or forever).

        Training runs on its own thread from the start to the end; this thread commits a
        snapshot at each round's commit point and runs the round's exchange while the
        next round trains.
        """
        self.options.announce(f"peer {self.identity.peer_id} in swarm {self.options.swarm!r}")
        self.options.metrics.describe(role="peer", peer_id=self.identity.peer_id, swarm=self.options.swarm,
                                      software=SOFTWARE_VERSION)
        if self.options.address_file is not None:  # before the lines below, which scripts wait for too
            atomic_write(self.options.address_file, "".join(f"{a}\n" for a in self.addresses).encode())
        for address in self.addresses:
            self.options.announce(f"join with: --initial-peers {address}")
        clock, phases = self.options.clock, self.phases
        # Training starts when round 0's window opens (a new swarm's start delay is for
        # peers to gather, not a longer round 0), and after catching up, so no step is
        # taken on a version already left behind.
        if clock.time() < phases.round_start(0):
            self.heartbeat(role="waiting")
            clock.sleep_until(phases.round_start(0))
        now = phases.training_round(clock.time())
        gap = skipped_rounds(self.state.round, now) if self.resumed else None  # a new joiner just catches up
        if gap is not None:
            self.options.announce(gap)
        self.state = self._caught_up(now)
        self.worker = TrainingWorker(ProgressTracker(self.trainer, self.state.params, self.state.version),
                                     max_steps=self.config.train.inner_steps, trains=faults.trains(self.options.fault))
        self.worker.start()
        joined = clock.time()
        summaries: list[RoundSummary] = []
        try:
            while self.options.rounds is None or len(summaries) < self.options.rounds:
                r = phases.training_round(clock.time())
                if self.state.round < r:
                    self._adopt(self._caught_up(r))
                commit_at = phases.deadline(r, Phase.TRAIN) - PUBLISH_MARGIN_S
                first_window = phases.deadline(r, Phase.TRAIN) - max(joined, phases.round_start(r))
                # A round that overran into this one's margin still commits, late, before the
                # commit point itself (others read commitments a phase after it).
                if (self.state.round != r or clock.time() >= phases.deadline(r, Phase.TRAIN)
                        or (not summaries and first_window < MIN_TRAIN_SHARE * self.config.timing.train_s)):
                    self.heartbeat(role="waiting")  # training goes on; its progress is carried over
                    clock.sleep_until(phases.deadline(r, Phase.TRAIN))
                    continue
                self.heartbeat(role="training")
                clock.sleep_until(commit_at)
                if faults.copies(self.options.fault):
                    self.contributor.copy_source = copycat_source(
                        self.engine.merged_into(self.state), self.contributor.last_digest,
                        self.state.params, self.config.codec)
                update = self.contributor.contribute(self.worker.snapshot(), self.state.version)
                if faults.commits_late(self.options.fault):
                    clock.sleep_until(phases.deadline(r, Phase.COMMIT) + LATE_COMMIT_S)
                try:
                    result = self.engine.play(r, self.state, update, on_merged=self._adopt)
                except DHTTimeoutError as error:
                    # A slow DHT costs this round, not the peer: catch up at the next one.
                    self.options.announce(f"round {r}: the DHT did not answer in time ({error}); "
                                          "skipping to the next round")
                    clock.sleep_until(phases.deadline(r, Phase.AGREE))
                    continue
                self._adopt(result.state)
                # wide-adamw: the next merge likely averages about as many updates as this one.
                self.trainer.set_swarm_size(result.summary.accepted)
                summaries.append(result.summary)
                # The status before the round is counted: a scrape that sees rounds_total go up
                # sees every total behind the round (sent bytes once still read 0 in between).
                status = self._status_record(role="training")
                self.options.metrics.round_done(result.summary, train_loss=update.train_loss,
                                                contributions=recorded_contributions(self.context.store, result.summary),
                                                throughput=self.worker.stats(),
                                                own_totals=(self.engine.accepted, self.engine.rejected))
                self._save_local_state()
                self.options.announce(result.summary.line())
                self.records.heartbeat(status)
            stats = self.worker.stats()
            self.options.announce(
                f"trained {stats.steps} steps in {stats.wall_seconds:.1f}s "
                f"(utilisation {stats.utilisation:.1%}, {stats.samples_per_second:.1f} samples/s)")
            self.heartbeat(role="leaving")
            time.sleep(self.options.linger_s)
        finally:
            self.worker.stop()
        return summaries

    def _caught_up(self, r: int) -> ModelState:
        """The state to commit from in round ``r`` (see :meth:`StateSync.catch_up`).

        V(r) comes out of round r-1, whose results are out this far into its agree phase
        (still before round r's commit point), so that is waited for first.
        """
        if r >= 1:
            self.options.clock.sleep_until(self.phases.deadline(r - 1, Phase.VOTE)
                                           + AGREE_READ_SHARE * self.config.timing.agree_s)
        return self.sync.catch_up(r, self.state)

    def _adopt(self, state: ModelState) -> None:
        """Go on from ``state``; the training thread carries its recent progress onto it
        when it is next to the version that progress was measured from: its direct
        successor, a sibling (the majority's V(r+1) after this peer's own), or its parent
        (back to V(r) when the agree step could not be resolved)."""
        assert self.worker is not None and self.store is not None
        if state.version != self.state.version:
            carry = carries_progress(new=state.version.hex(), new_parent=self._parent(state.version),
                                     held=self.state.version.hex(), held_parent=self._parent(self.state.version))
            self.worker.rebase(state.params, state.version, carry=carry)
        self.state = state

    def _parent(self, version: bytes) -> str | None:
        assert self.store is not None
        try:
            return self.store.commit(version.hex()).parent_id
        except StoreError:
            return None

    def heartbeat(self, role: str) -> None:
        """Publish this peer's status record (what ``swarmtrain status`` shows)."""
        self.records.heartbeat(self._status_record(role))

    def _status_record(self, role: str) -> PeerRecord:
        """This peer's status now, also handed to its metrics (which advance every running
        total from it)."""
        assert self.exchange is not None
        sent = self.exchange.stats()
        stats = None if self.worker is None else self.worker.stats()
        loss = self.state.validation_loss
        if loss is not None and math.isfinite(loss):
            self._losses[self.state.version] = loss
            self._losses = dict(list(self._losses.items())[-LOSS_TREND_LEN:])
        record = PeerRecord(
            peer_id=self.identity.peer_id, addresses=self.addresses[:8], round=self.state.round,
            version_id=self.state.version.hex(), state_checksum=self.state.checksum.hex(), role=role,
            last_val_loss=loss if loss is not None and math.isfinite(loss) else None,
            bytes_sent=sent.bytes_sent, bytes_received=sent.bytes_received,
            updates_accepted=self.engine.accepted, updates_rejected=self.engine.rejected,
            software_version=SOFTWARE_VERSION, time=time.time(), last_round_s=self.engine.last_round_s,
            resyncs=self.sync.resyncs,
            utilisation=None if stats is None else round(min(1.0, stats.utilisation), 4),
            samples_per_s=None if stats is None else round(stats.samples_per_second, 2),
            loss_trend=[round(v, 5) for v in self._losses.values()] or None,
        )
        self.options.metrics.peer_status(record, invalid_records=self.records.invalid_records,
                                         fetch_failures=sent.fetches_failed)
        return record

    def close(self) -> None:
        """Stop serving, leave the DHT, release the data dir (safe to call twice)."""
        if self.exchange is not None:
            self.exchange.close()
            self.exchange = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.dht is not None:
            self.dht.shutdown()
            self.dht = None  # type: ignore[assignment]


def _initial_checksum(config: SwarmConfig) -> bytes:
    """Checksum of the initial parameters + empty outer state built from ``config``."""
    return genesis_state(load_task(config), config).checksum


def skipped_rounds(held_round: int, now: int) -> str | None:
    """Why a resumed peer goes on at a later round than the version it holds (None when it
    does not): round numbers follow the genesis clock, so rounds pass while no peer runs."""
    if now <= held_round:
        return None
    passed = f"round {held_round}" if now == held_round + 1 else f"rounds {held_round}-{now - 1}"
    return (f"the swarm's clock is at round {now}: {passed} passed with no merge from this peer "
            f"(rounds follow the genesis clock, not the work); going on from the newest version")


def check_genesis(genesis: GenesisRecord, *, insisted: SwarmConfig | None) -> SwarmConfig:
    """The genesis' settings, or :class:`JoinError` saying why this peer must not adopt them.

    Runs before anything the record asks for is built: its settings must be readable and
    bounded (a record may ask for any model size), and a ``module:function`` task only
    runs when this peer's own command line (``insisted``) names it.
    """
    if genesis.protocol_version != PROTOCOL_VERSION:
        raise JoinError(f"swarm {genesis.swarm!r} speaks protocol v{genesis.protocol_version}, "
                        f"this swarmtrain speaks v{PROTOCOL_VERSION}: upgrade swarmtrain")
    try:
        theirs = SwarmConfig.from_dict(genesis.config)
    except (ValueError, TypeError) as error:
        raise JoinError(f"the genesis of {genesis.swarm!r} holds settings this version cannot read: {error}") \
            from error
    if genesis.task != theirs.task:
        raise JoinError(f"the genesis of {genesis.swarm!r} names task {genesis.task!r} but its settings "
                        f"say {theirs.task!r}: a malformed genesis; pin the swarm's real one with --genesis")
    if theirs.task.startswith(HF_PREFIX):
        # The model directory is local files whose path differs per machine: the joiner names
        # its own, and the genesis' initial checksum (checked once it is built) proves it the same.
        if insisted is None or not insisted.task.startswith(HF_PREFIX):
            raise JoinError(f"swarm {genesis.swarm!r} trains a Hugging Face model from local files "
                            f"({theirs.task!r}); name your copy: --task hf:PATH --data PATH [PATH ...]")
        theirs = theirs.replace(task=insisted.task)
    elif theirs.task not in BUILTIN_TASKS and (insisted is None or insisted.task != theirs.task):
        # A "module:function" task is code: it runs only when this peer's own command line
        # names it, never because a DHT record (anyone's) does.
        raise JoinError(f"swarm {genesis.swarm!r} trains task {theirs.task!r}, which is code on this "
                        f"machine, not a built-in task; to run it, name it yourself: --task {theirs.task}")
    if insisted is not None and insisted != theirs:
        diffs = _config_diff(insisted.to_dict(), theirs.to_dict())
        raise JoinError(f"your settings differ from swarm {genesis.swarm!r}'s genesis ({'; '.join(diffs)}); "
                        "drop the flags that change them to adopt the swarm's settings")
    return theirs


def _config_diff(mine: dict[str, object], theirs: dict[str, object], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_config_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: yours {a!r}, swarm {b!r}")
    return out


