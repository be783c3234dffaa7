"""Getting onto the majority's version: the agree step, late join and restart.

A peer whose merge differs from the majority's result (or who could not merge, or who
was away) downloads the majority's state from a peer that holds it, checks its checksum
against the one the majority published, stores it, and goes on from there. Every resync
is counted and printed: a swarm that resyncs every round has a determinism bug.

Every method takes the state the caller holds and returns the state to go on with;
nothing here assigns a node's state.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import sys
from collections import Counter

from swarmtrain.dht import ResultRecord
from swarmtrain.peer.exchange.errors import FetchError
from swarmtrain.peer.exchange.ring import ServedRing
from swarmtrain.peer.round.context import RoundContext, max_state_bytes
from swarmtrain.peer.round.state import ModelState, load_version, verified_checksum
from swarmtrain.peer.store.versions import StoreError, VersionCommit

log = logging.getLogger(__name__)

# How many rounds back a catching-up peer looks for published results.
LOOKBACK_ROUNDS = 8
STATE_TIMEOUT_S = 120.0
STATE_STALL_S = 15.0   # a holder silent this long between two frames is dropped
PARALLEL_HOLDERS = 3   # holders a state is requested from at once
SERVED_STATES = 2


class StateSync:
    def __init__(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        self.resyncs = 0
        self._served = ServedRing(ctx.exchange, "state", keep=SERVED_STATES)

    def serve(self, state: ModelState) -> None:
        """Serve ``state`` (already in the store) to peers that need it."""
        key = state.version.hex()
        store = self.ctx.store
        self._served.add(key, lambda: store.state_bytes(key))

    def agree(self, r: int, state: ModelState, merged: ModelState | None) -> tuple[ModelState, bool]:
        """After round ``r``'s merge: the state to go on with, and whether this peer had
        to download the majority's.

        ``state`` is V(r), ``merged`` this peer's own V(r+1) (None when it could not
        merge). A peer in the minority that cannot download the majority's state stays
        on V(r), the last version it agreed on, and catches up before its next commit.
        """
        ctx = self.ctx
        found = majority(ctx.records.results(r))
        if found is None:
            return (state if merged is None else merged), False
        version, checksum, holders = found
        if merged is not None and merged.version.hex() == version and merged.checksum.hex() == checksum:
            return merged, False
        mine = state.version if merged is None else merged.version
        ctx.announce(f"round {r}: my version {mine.hex()[:12]} is not the majority's "
                     f"{version[:12]} ({len(holders)} peers): resyncing")
        synced = self._fetch(version, checksum, holders, produced_in=r, state=state)
        # Counted here only: a late joiner's or restarted peer's catch-up is no disagreement.
        self.resyncs += int(synced is not None)
        return (state, False) if synced is None else (synced, True)

    def catch_up(self, r: int, state: ModelState) -> ModelState:
        """Before committing in round ``r``: the newest majority version at or before V(r)
        (late join, restart, a missed round), marked as the state of round ``r``.

        When nothing newer was published it goes on from what it holds (a swarm resumed
        after all its peers stopped). When a newer version was published but could not be
        downloaded, ``state`` comes back unchanged, so the caller does not commit on a
        version the others have left, and tries again.
        """
        ctx = self.ctx
        for back in range(1, LOOKBACK_ROUNDS + 1):
            produced_in = r - back
            if produced_in < state.round - 1 or produced_in < 0:
                break
            found = majority(ctx.records.results(produced_in))
            if found is None:
                continue
            version, checksum, holders = found
            if state.version.hex() == version and state.checksum.hex() == checksum:
                break
            if _has(ctx, version, checksum):
                state = load_version(ctx.store, version, state.outer, next_round=produced_in + 1)
                self.serve(state)
                break
            ctx.announce(f"catching up: downloading version {version[:12]} "
                         f"(round {produced_in}) from {len(holders)} peer(s)")
            fetched = self._fetch(version, checksum, holders, produced_in=produced_in, state=state)
            if fetched is None:
                return state
            state = fetched
            break
        return dataclasses.replace(state, round=max(state.round, r))

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


def majority(results: dict[str, ResultRecord]) -> tuple[str, str, list[str]] | None:
    """The (version id, state checksum) most peers computed, with the peers that hold it."""
    if not results:
        return None
    counter = Counter((r.version_id, r.state_checksum) for r in results.values())
    (version, checksum), _ = min(counter.items(), key=lambda item: (-item[1], item[0]))
    holders = sorted(p for p, r in results.items() if (r.version_id, r.state_checksum) == (version, checksum))
    return version, checksum, holders
