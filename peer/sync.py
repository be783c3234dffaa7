"""Getting onto the majority's version: the agree step, late join and restart.

A peer whose merge differs from the majority's result (or who could not merge, or who
was away) downloads the majority's state from a peer that holds it, checks its checksum
against the one the majority published, stores it, and goes on from there. Every resync
is counted and printed: a swarm that resyncs every round has a determinism bug.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

from swarmtrain.dht import ResultRecord
from swarmtrain.peer.exchange import FetchError
from swarmtrain.peer.state import ModelState, checksum_of, load_version
from swarmtrain.peer.store import StoreError, VersionCommit

if TYPE_CHECKING:
    from swarmtrain.peer.node import Node

log = logging.getLogger(__name__)

# How many rounds back a catching-up peer looks for published results.
LOOKBACK_ROUNDS = 8
STATE_TIMEOUT_S = 120.0
SERVED_STATES = 2


class StateSync:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.resyncs = 0
        self._served: list[str] = []
        self.adopt(node.state)

    def adopt(self, state: ModelState) -> None:
        """Make ``state`` current and serve it to peers that need it."""
        node = self.node
        node.state = state
        key = state.version.hex()
        if node.exchange is not None and node.store is not None and key not in self._served:
            store = node.store
            node.exchange.serve_provider("state", key, lambda: store.state_bytes(key))
            self._served.append(key)
            while len(self._served) > SERVED_STATES:
                node.exchange.unserve("state", self._served.pop(0))

    def agree(self, r: int, *, mine_ok: bool) -> bool:
        """After round ``r``'s merge: True when this peer had to download the majority state."""
        node = self.node
        found = majority(node.records.results(r))
        if found is None:
            return False
        version, checksum, holders = found
        if mine_ok and node.state.version.hex() == version and node.state.checksum.hex() == checksum:
            return False
        node.options.announce(f"round {r}: my version {node.state.version.hex()[:12]} is not the majority's "
                              f"{version[:12]} ({len(holders)} peers): resyncing")
        synced = self._fetch(version, checksum, holders, produced_in=r)
        # Counted here only: a late joiner's or restarted peer's catch-up is no disagreement.
        self.resyncs += int(synced)
        return synced

    def catch_up(self, r: int) -> None:
        """Before playing round ``r``: make sure this peer holds V(r) (late join, restart)."""
        node = self.node
        for back in range(1, LOOKBACK_ROUNDS + 1):
            produced_in = r - back
            if produced_in < node.state.round - 1 or produced_in < 0:
                break
            found = majority(node.records.results(produced_in))
            if found is None:
                continue
            version, checksum, holders = found
            if node.state.version.hex() == version and node.state.checksum.hex() == checksum:
                break
            if node.store is not None and _has(node, version, checksum):
                self.adopt(load_version(node.store, version, node.state.outer, next_round=produced_in + 1))
                break
            node.options.announce(f"catching up: downloading version {version[:12]} "
                                  f"(round {produced_in}) from {len(holders)} peer(s)")
            self._fetch(version, checksum, holders, produced_in=produced_in)
            break
        # Nothing newer was published (or it could not be fetched): go on from what we hold.
        node.state.round = max(node.state.round, r)

    def _fetch(self, version: str, checksum: str, holders: list[str], *, produced_in: int) -> bool:
        node = self.node
        assert node.exchange is not None and node.store is not None
        candidates = [p for p in holders if p != node.identity.peer_id]
        candidates += [p for p, rec in node.records.peers().items()
                       if rec.version_id == version and p not in candidates and p != node.identity.peer_id]
        max_size = (1 << 20) + 16 * sum(t.numel() for t in node.state.params.values())
        # The parent is known when this is the next version after ours (the agree step).
        parent = node.state.version.hex() if node.state.round == produced_in and node.state.version.hex() != version \
            else None
        commit = VersionCommit(version_id=version, parent_id=parent, round=produced_in, created=time.time(),
                               contributions=(), validation_loss=None, state_checksum=checksum)
        for peer in candidates:
            started = time.monotonic()
            try:
                data = node.exchange.fetch(peer, "state", version, max_size=max_size, timeout=STATE_TIMEOUT_S,
                                           progress=_progress_printer(version))
                node.store.save_from_bytes(commit, data, checksum=checksum_of)
            except (FetchError, StoreError) as error:
                log.warning("state %s from %s failed: %s", version[:12], peer, error)
                continue
            self.adopt(load_version(node.store, version, node.state.outer, next_round=produced_in + 1))
            node.options.announce(f"synced version {version[:12]} ({len(data) / 1e6:.1f} MB, checksum ok) "
                                  f"from {peer[:12]} in {time.monotonic() - started:.1f}s")
            return True
        node.options.announce(f"could not download version {version[:12]} from any of {len(candidates)} peer(s); "
                              "will retry next round")
        return False


def _has(node: Node, version: str, checksum: str) -> bool:
    assert node.store is not None
    try:
        return node.store.has_state(version) and node.store.commit(version).state_checksum == checksum
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
