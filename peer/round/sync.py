"""Getting onto the others' version: the agree step, late join and restart.

A peer whose merge differs from the most published result (or who could not merge)
recomputes that result from the parent it holds, the round's signed records and the
accepted payloads (:mod:`.recompute`), and adopts it only when its own recomputation
gives the same id and checksum; otherwise it keeps its own version and says why. A peer
that was away (late join, restart) replays the rounds it missed the same way, from the
newest version it holds, or from a version its user pinned (``--trust-version``: the
one state it downloads, checked against the pinned checksum). Only where replay is
impossible, and only when its user said ``--trust-state``, does it download the newest
state on its publishers' word, naming them.
Every resync is counted and printed: a swarm that resyncs every round has a
determinism bug.

Every method takes the state the caller holds and returns the state to go on with;
nothing here assigns a node's state.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import sys

from collections.abc import Mapping

from swarmtrain.dht import CommitRecord
from swarmtrain.peer.exchange.errors import FetchError
from swarmtrain.peer.exchange.ring import ServedRing
from swarmtrain.peer.round.clock import Phase
from swarmtrain.peer.round.context import RoundContext, max_state_bytes
from swarmtrain.peer.round.payloads import Payloads
from swarmtrain.peer.round.pin import PinnedVersion
from swarmtrain.peer.round.recompute import Claim, Recomputer, claims
from swarmtrain.peer.round.state import ModelState, load_version, verified_checksum
from swarmtrain.peer.store.payloads import HISTORY_ROUNDS, PAYLOADS_DIR, PayloadHistory
from swarmtrain.peer.store.versions import StoreError, VersionCommit

log = logging.getLogger(__name__)

# How many rounds back a catching-up peer looks for the newest published result.
LOOKBACK_ROUNDS = 8
STATE_TIMEOUT_S = 120.0
STATE_STALL_S = 15.0   # a holder silent this long between two frames is dropped
PARALLEL_HOLDERS = 3   # holders a state is requested from at once
SERVED_STATES = 2      # at least; every state the store keeps is served
# How far back a pinned version (--trust-version) is looked for among the published
# results: the DHT keeps round records for an hour, a few hundred demo rounds. Each round
# is looked at once per peer run (see StateSync._find_pin).
PIN_LOOKBACK_ROUNDS = 512


class StateSync:
    def __init__(self, ctx: RoundContext, *, trust_states: bool = False,
                 keep_payload_rounds: int = HISTORY_ROUNDS, pinned: PinnedVersion | None = None) -> None:
        self.ctx = ctx
        self.resyncs = 0
        self.disagreements = 0  # published results this peer could not recompute, and so refused
        self.trust_states = trust_states
        self.pinned = pinned
        self._pin_found: tuple[int, Claim] | None = None  # the round that produced the pin, and its result
        self._pin_scanned: set[int] = set()               # rounds whose results were searched for it
        # Every version whose state the store keeps is served (read from disk per request),
        # so a peer that pinned one of them can start from it.
        self._served = ServedRing(ctx.exchange, "state", keep=max(SERVED_STATES, ctx.store.keep))
        self.payloads = Payloads(ctx, PayloadHistory(ctx.store.data_dir / PAYLOADS_DIR, keep_payload_rounds))
        self.recomputer = Recomputer(ctx, self.payloads)

    def serve(self, state: ModelState) -> None:
        """Serve ``state`` (already in the store) to peers that need it."""
        key = state.version.hex()
        store = self.ctx.store
        self._served.add(key, lambda: store.state_bytes(key))

    def agree(self, r: int, state: ModelState, merged: ModelState | None, *,
              frozen: Mapping[str, CommitRecord] | None = None) -> tuple[ModelState, bool]:
        """After round ``r``'s merge: the state to go on with, and whether it is another
        peer's result (recomputed here) rather than this peer's own.

        ``state`` is V(r), ``merged`` this peer's own V(r+1) (None when it could not
        merge), ``frozen`` the commitments it decided over. A peer that cannot recompute
        the most published result keeps its own V(r+1) (or V(r)) and records the
        disagreement; it never downloads a state here.
        """
        ctx = self.ctx
        found = claims(r, ctx.records.results(r))
        if not found:
            return (state if merged is None else merged), False
        top = found[0]
        if merged is not None and top.names(merged):
            return merged, False
        mine = state.version if merged is None else merged.version
        ctx.announce(f"round {r}: my version {mine.hex()[:12]} is not the majority's "
                     f"{top.version[:12]} ({len(top.holders)} peers): recomputing it")
        result = self.recomputer.recompute(r, state.version, top, frozen=frozen,
                                           deadline=ctx.phases.deadline(r, Phase.AGREE))
        if isinstance(result, ModelState):
            self.serve(result)
            self.resyncs += 1
            ctx.announce(f"round {r}: recomputed version {top.version[:12]} from its "
                         f"{len(top.accepted)} accepted update(s): same id and checksum, adopted")
            return result, True
        self.disagreements += 1
        ctx.announce(f"round {r}: not adopting version {top.version[:12]} of {_whose(top)}: {result}; "
                     f"keeping {'my own' if merged is not None else 'version'} {mine.hex()[:12]}")
        return (state if merged is None else merged), False

    def catch_up(self, r: int, state: ModelState) -> ModelState:
        """Before committing in round ``r``: the newest published version at or before
        V(r) (late join, restart, a missed round), replayed from ``state``, marked as the
        state of round ``r``.

        When nothing newer was published it goes on from what it holds (a swarm resumed
        after all its peers stopped). When a newer version was published but could not be
        re-derived (nor, with ``--trust-state``, downloaded), ``state`` comes back
        unchanged, so the caller does not commit on a version the others have left, and
        tries again. With a pinned version (``--trust-version``), a replay that cannot
        start from ``state`` starts from the pin instead.
        """
        ctx = self.ctx
        for back in range(1, LOOKBACK_ROUNDS + 1):
            produced_in = r - back
            if produced_in < state.round - 1 or produced_in < 0:
                break
            found = claims(produced_in, ctx.records.results(produced_in))
            if not found:
                continue
            top = found[0]
            if top.names(state):
                break
            if _has(ctx, top.version, top.checksum):
                state = load_version(ctx.store, top.version, state.outer, next_round=produced_in + 1)
                self.serve(state)
                break
            replayed = self._replay(state, produced_in, top)
            if isinstance(replayed, ModelState):
                state = replayed
                break
            if self.pinned is not None and self.pinned.version != state.version.hex():
                from_pin = self._replay_from_pin(state, r, produced_in, top)
                if isinstance(from_pin, ModelState):
                    state = from_pin
                    break
                replayed = f"{replayed}; nor from the pinned version {self.pinned.version[:12]}: {from_pin}"
            if not self.trust_states:
                ctx.announce(f"catching up: cannot re-derive version {top.version[:12]} (round {produced_in}) "
                             f"from version {state.version.hex()[:12]}: {replayed}; to take it on the word of "
                             f"{_whose(top)} instead, restart with --trust-state")
                return state
            ctx.announce(f"catching up: cannot re-derive version {top.version[:12]} ({replayed}); "
                         f"downloading it ON TRUST (--trust-state) from {_whose(top)}")
            fetched = self._fetch(top.version, top.checksum, list(top.holders), produced_in=produced_in, state=state)
            if fetched is None:
                return state
            state = fetched
            break
        return dataclasses.replace(state, round=max(state.round, r))

    def _replay(self, state: ModelState, until: int, target: Claim) -> ModelState | str:
        """Rounds ``start..until`` recomputed one by one from a version this peer holds:
        ``state``, or its parent when ``state`` is a sibling of the version to reach."""
        ctx = self.ctx
        start, current = state.round, state.version
        if start > until:
            try:
                parent = ctx.store.commit(state.version.hex()).parent_id
            except StoreError:
                parent = None
            if parent is None:
                return f"version {state.version.hex()[:12]} has no parent here to replay from"
            start, current = until, bytes.fromhex(parent)
        ctx.announce(f"catching up: replaying rounds {start}-{until} from version {current.hex()[:12]}")
        replayed: ModelState | None = None
        for k in range(start, until + 1):
            found = claims(k, ctx.records.results(k)) if k < until else [target]
            if not found:
                continue  # nobody merged in round k: its version is the one before
            why = "no result"
            for claim in found:
                result = self.recomputer.recompute(k, current, claim, measure_loss=k == until,
                                                   deadline=ctx.clock.time() + STATE_TIMEOUT_S)
                if isinstance(result, ModelState):
                    replayed, current = result, result.version
                    break
                why = result
            else:
                return f"round {k}: {why}"
        if replayed is None or not target.names(replayed):
            return "the replayed rounds do not end on it"
        self.serve(replayed)  # already saved by the recomputation, as the state of round until + 1
        ctx.announce(f"caught up: replayed to version {replayed.version.hex()[:12]} (round {until}), "
                     "same id and checksum as published")
        return replayed

    def _replay_from_pin(self, state: ModelState, r: int, until: int, target: Claim) -> ModelState | str:
        """``target`` replayed from the pinned version: held here, or downloaded once from
        whoever serves it and checked against the pinned checksum (and the model)."""
        pin = self.pinned
        assert pin is not None
        ctx = self.ctx
        if _has(ctx, pin.version, pin.checksum):
            start = load_version(ctx.store, pin.version, state.outer,
                                 next_round=ctx.store.commit(pin.version).round + 1)
        else:
            found = self._find_pin(r, state.round)
            if found is None:
                return (f"no result published in rounds {_pin_rounds(r, state.round).stop + 1}-{r - 1} names it "
                        "with that checksum (check the pin, or pin a newer version)")
            produced_in, claim = found
            holders = [*claim.holders, *(p for p in ctx.records.peers() if p not in claim.holders)]
            ctx.announce(f"catching up: downloading the pinned version {pin.version[:12]} (round {produced_in}, "
                         f"--trust-version) to replay from")
            fetched = self._fetch(pin.version, pin.checksum, holders, produced_in=produced_in, state=state)
            if fetched is None:
                return "nobody served its state"
            start = fetched
        if target.names(start):
            return start
        if start.round > until:
            return f"it is not older than version {target.version[:12]} of round {until}"
        return self._replay(start, until, target)

    def _find_pin(self, r: int, held_round: int) -> tuple[int, Claim] | None:
        """The round whose published results name the pin, looking at each round once
        per run (a stuck peer calls this every round, and each look is a DHT read)."""
        pin = self.pinned
        assert pin is not None
        if self._pin_found is None:
            for k in _pin_rounds(r, held_round):
                if k in self._pin_scanned:
                    continue
                self._pin_scanned.add(k)
                match = [c for c in claims(k, self.ctx.records.results(k))
                         if (c.version, c.checksum) == (pin.version, pin.checksum)]
                if match:
                    self._pin_found = (k, match[0])
                    break
        return self._pin_found

    def _fetch(self, version: str, checksum: str, holders: list[str], *, produced_in: int,
               state: ModelState) -> ModelState | None:
        ctx = self.ctx
        me = ctx.peer_id
        candidates = [p for p in holders if p != me]
        candidates += [p for p, rec in ctx.records.peers().items()
                       if rec.version_id == version and p not in candidates and p != me]
        # The parent is known when this is the next version after ours (the agree step).
        parent = state.version.hex() if state.round == produced_in and state.version.hex() != version else None
        commit = VersionCommit(version_id=version, parent_id=parent, round=produced_in, created=ctx.clock.time(),
                               contributions=(), validation_loss=None, state_checksum=checksum)
        # Several holders at once, each bounded by a stall timeout: one that accepts the
        # stream and then sends nothing costs STATE_STALL_S, not the whole deadline, and
        # never delays the others. The first state that verifies wins; the rest are
        # cancelled (at most PARALLEL_HOLDERS copies cross the wire).
        for start in range(0, len(candidates), PARALLEL_HOLDERS):
            started = ctx.clock.time()
            batch = candidates[start:start + PARALLEL_HOLDERS]
            futures = {
                ctx.exchange.fetch_future(peer, "state", version, max_size=max_state_bytes(state.params),
                                          timeout=STATE_TIMEOUT_S, stall_timeout=STATE_STALL_S,
                                          progress=_progress_printer(version) if peer == batch[0] else None): peer
                for peer in batch
            }
            try:
                for future in concurrent.futures.as_completed(futures, timeout=STATE_TIMEOUT_S + 5.0):
                    peer = futures[future]
                    try:
                        data = future.result()
                        ctx.store.save_from_bytes(commit, data, checksum=verified_checksum(state.params))
                    except (FetchError, StoreError) as error:
                        log.warning("state %s from %s failed: %s", version[:12], peer, error)
                        continue
                    synced = load_version(ctx.store, version, state.outer, next_round=produced_in + 1)
                    self.serve(synced)
                    ctx.announce(f"synced version {version[:12]} ({len(data) / 1e6:.1f} MB, checksum ok) "
                                 f"from {peer[:12]} in {ctx.clock.time() - started:.1f}s")
                    return synced
            except concurrent.futures.TimeoutError:
                log.warning("state %s: no holder of %s answered in time", version[:12], batch)
            finally:
                for future in futures:
                    future.cancel()
        ctx.announce(f"could not download version {version[:12]} from any of {len(candidates)} peer(s); "
                     "will retry next round")
        return None


def _pin_rounds(r: int, held_round: int) -> range:
    """The rounds, newest first, whose results may name a pin worth replaying from: not
    older than the version held (it would not get further) nor than the lookback."""
    return range(r - 1, max(0, held_round - 1, r - PIN_LOOKBACK_ROUNDS) - 1, -1)


def _has(ctx: RoundContext, version: str, checksum: str) -> bool:
    try:
        return ctx.store.has_state(version) and ctx.store.commit(version).state_checksum == checksum
    except StoreError:
        return False


def _progress_printer(version: str):  # type: ignore[no-untyped-def]
    """A download progress line on a terminal (quiet otherwise: logs stay readable)."""
    if not sys.stderr.isatty():
        return None
    def show(done: int, total: int) -> None:
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        print(f"\r  state {version[:12]} [{bar:<30}] {share:6.1%} of {total / 1e6:.1f} MB",
              end="" if done < total else "\n", file=sys.stderr, flush=True)
    return show


def _whose(claim: Claim) -> str:
    shown = ", ".join(h[:12] for h in claim.holders[:3])
    more = f" and {len(claim.holders) - 3} more" if len(claim.holders) > 3 else ""
    return f"{len(claim.holders)} peer(s) ({shown}{more})"
