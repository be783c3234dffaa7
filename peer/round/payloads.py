"""Update payloads: fetching them by digest, and keeping the accepted ones served.

Checkers fetch what they must judge from its author; a merge fetches what was accepted;
a peer recomputing a version (:mod:`.recompute`) fetches what someone else accepted,
from its author or from any peer that merged it. Every peer keeps the payloads it
merged for a while (:class:`~swarmtrain.peer.store.payloads.PayloadHistory`) and serves
them, so a version can be re-derived after its authors have left.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Mapping, Sequence

from swarmtrain.peer.exchange.errors import DigestMismatch, FetchError
from swarmtrain.peer.exchange.server import BlobNotReady
from swarmtrain.peer.round.context import RoundContext
from swarmtrain.peer.store.errors import StoreError
from swarmtrain.peer.store.payloads import PayloadHistory

log = logging.getLogger(__name__)


class Payloads:
    """This peer's payloads: a cache of the current rounds, the kept history, fetching."""

    def __init__(self, ctx: RoundContext, history: PayloadHistory) -> None:
        self.ctx = ctx
        self.history = history
        self._cache: dict[bytes, bytes] = {}  # digest -> payload, this round and last
        self.failures: dict[bytes, str] = {}  # why a fetch from the author failed, this round
        self._warned = False
        for digest in history.digests():
            self._serve_kept(digest, None)

    def keep(self, round_: int, digest: bytes, payload: bytes, *, reveal_at: float | None = None) -> None:
        """Keep and serve ``payload`` (verified against ``digest``) as part of round ``round_``;
        with ``reveal_at``, others asking before that time (on this peer's clock) are told
        to retry (see :meth:`_serve_kept`)."""
        self._cache[digest] = payload
        try:
            self.history.put(round_, digest.hex(), payload)
        except StoreError as error:
            # Keeping history helps others replay; losing it (a full disk) must not stop
            # this peer's rounds. Said once, then the payload is served from memory.
            if not self._warned:
                self.ctx.announce(f"could not keep update payloads for replay: {error}")
                self._warned = True
            if reveal_at is None:
                self.ctx.exchange.serve("update", digest.hex(), payload)  # bounded by the exchange's store
            else:
                self._serve(digest.hex(), lambda: payload, reveal_at)  # this peer's own, one a round
            return
        self._serve_kept(digest.hex(), reveal_at)

    def prune(self, current_round: int) -> None:
        for digest in self.history.prune(current_round):
            self.ctx.exchange.unserve("update", digest)

    def cached(self, digest: bytes) -> bytes | None:
        return self._cache.get(digest)

    def held(self, digests: Sequence[bytes]) -> dict[bytes, bytes]:
        """Those of ``digests`` this peer holds (this round's cache or the kept history)."""
        out = {}
        for digest in digests:
            payload = self._cache.get(digest) or self.history.get(digest.hex())
            if payload is not None:
                out[digest] = payload
        return out

    def forget(self, keep: set[bytes]) -> None:
        """Drop cached payloads other than ``keep`` (they stay on disk while kept)."""
        self._cache = {d: p for d, p in self._cache.items() if d in keep}
        self.failures.clear()

    def fetch(self, wanted: Mapping[bytes, Sequence[str]], *, max_size: int,
              deadline: float) -> dict[bytes, bytes | None]:
        """Download ``{digest: [source, ...]}``, each from its first source in parallel,
        then from the next sources in turn; all bounded by ``deadline``.

        A payload that no source gave maps to None; why its first source failed is kept
        in :attr:`failures` (a checker's reason to reject).
        """
        held = self.held(list(wanted))
        out: dict[bytes, bytes | None] = {digest: held.get(digest) for digest in wanted}
        todo = {d: list(sources) for d, sources in wanted.items() if out[d] is None and sources}
        attempt = 0
        while todo:
            futures = {d: self._start(sources[attempt], d, max_size, deadline)
                       for d, sources in todo.items()}
            for digest, future in futures.items():
                payload = self._result(future, todo[digest][attempt], digest, deadline, first=attempt == 0)
                if payload is not None:
                    out[digest] = self._cache[digest] = payload
            attempt += 1
            todo = {d: s for d, s in todo.items() if out[d] is None and len(s) > attempt}
            if self.ctx.clock.time() >= deadline:
                break
        return out

    def _start(self, peer: str, digest: bytes, max_size: int,
               deadline: float) -> concurrent.futures.Future[bytes]:
        timeout = max(0.5, deadline - self.ctx.clock.time())
        return self.ctx.exchange.fetch_future(peer, "update", digest.hex(), max_size=max_size, timeout=timeout)

    def _result(self, future: concurrent.futures.Future[bytes], peer: str, digest: bytes, deadline: float,
                *, first: bool) -> bytes | None:
        try:
            return future.result(timeout=max(0.5, deadline - self.ctx.clock.time()) + 1.0)
        except (FetchError, concurrent.futures.TimeoutError) as error:
            log.info("could not fetch update %s from %s: %s", digest.hex()[:12], peer, error)
            if first:
                self.failures[digest] = (
                    "digest mismatch: served bytes differ from the commitment" if isinstance(error, DigestMismatch)
                    else f"payload not downloaded ({type(error).__name__})")
            return None

    def _serve_kept(self, digest_hex: str, reveal_at: float | None) -> None:
        history = self.history

        def read() -> bytes:
            data = history.get(digest_hex)
            if data is None:
                raise LookupError(f"update {digest_hex[:12]} is no longer kept")
            return data
        self._serve(digest_hex, read, reveal_at)

    def _serve(self, digest_hex: str, read: Callable[[], bytes], reveal_at: float | None) -> None:
        """Serve an update through ``read``; not before ``reveal_at``.

        Commit, then reveal: an author's update is served only from its round's commit
        deadline on, when every commitment of the round is in (the others freeze the
        round's set as they read it then). Nobody can fetch an honest update during the
        commit phase and commit a perturbed copy of it as their own in the same round.
        """
        clock = self.ctx.clock

        def provide() -> bytes:
            if reveal_at is not None and clock.time() < reveal_at:
                raise BlobNotReady(f"revealed at the commit deadline, in {reveal_at - clock.time():.2f} s")
            return read()
        self.ctx.exchange.serve_provider("update", digest_hex, provide)
