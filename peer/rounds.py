"""One round over the network: train, commit, check and vote, merge, agree.

The round's math is shared with the simulator (:mod:`contribute`, :mod:`check`,
:mod:`vote`, :mod:`merge`); this module adds the DHT records, the payload transfers and
the phase deadlines. A peer that cannot merge what the majority merged (a payload it
could not fetch, a different vote view) ends up in the minority at the agree step and
downloads the majority's state (:mod:`sync`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swarmtrain.dht import REASON_CHARS, CommitRecord, ResultRecord, ValidationError, VoteRecord
from swarmtrain.dht import Verdict as VerdictRecord
from swarmtrain.peer.assignment import assignments
from swarmtrain.peer.check import Submission
from swarmtrain.peer.clock import Phase, sleep_until
from swarmtrain.peer.contribute import LocalUpdate
from swarmtrain.peer.exchange import DigestMismatch, FetchError
from swarmtrain.peer.merge import AcceptedUpdate, MergeError, next_version
from swarmtrain.peer.state import ModelState
from swarmtrain.peer.store import Contribution
from swarmtrain.peer.vote import Tally, Verdict, common_rejection, tally
from swarmtrain.protocol import ProtocolError, decode_update

if TYPE_CHECKING:
    from swarmtrain.peer.node import Node

log = logging.getLogger(__name__)

# Seconds kept free before a deadline for publishing (DHT stores take ~0.1-0.5 s here).
PUBLISH_MARGIN_S = 0.8
# Read the round's results this far into the agree phase (results are published at its start).
AGREE_READ_SHARE = 0.6


@dataclass(frozen=True)
class RoundTally:
    """The round as read after the vote deadline: commitments, their authors, the votes
    counted for each, and the reason its checkers most often gave for each rejection."""

    commits: dict[str, CommitRecord]
    authors: dict[bytes, str]
    counts: dict[bytes, Tally]
    rejections: dict[bytes, str]

    @property
    def accepted(self) -> list[bytes]:
        return sorted(d for d, t in self.counts.items() if t.accepted)

    def reason(self, digest: bytes, mine: Verdict | None) -> str:
        """What the history records: this peer's own reason when it checked the update
        and rejected it, else its checkers' most common one."""
        if self.counts[digest].accepted:
            return "accepted"
        if mine is not None and not mine.accept:
            return mine.reason
        if digest in self.rejections:
            return f"checkers: {self.rejections[digest]}"
        return "majority rejected"


@dataclass(frozen=True)
class RoundSummary:
    """What one round did on this peer (printed, and kept for tests)."""

    round: int
    version_id: str
    state_checksum: str
    accepted: int
    rejected: int
    mine_accepted: bool
    validation_loss: float | None
    bytes_sent: int
    bytes_received: int
    seconds: float
    resynced: bool
    steps: int

    def line(self) -> str:
        loss = "n/a" if self.validation_loss is None else f"{self.validation_loss:.4f}"
        return (f"round {self.round}: version {self.version_id[:12]} accepted {self.accepted}, "
                f"rejected {self.rejected} (mine {'accepted' if self.mine_accepted else 'rejected'}), "
                f"val loss {loss}, {self.steps} steps, sent {self.bytes_sent / 1024:.1f} KiB, "
                f"received {self.bytes_received / 1024:.1f} KiB, {self.seconds:.1f}s"
                + (", resynced" if self.resynced else ""))


class RoundEngine:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.accepted = 0      # this peer's updates accepted / rejected so far
        self.rejected = 0
        self._payloads: dict[bytes, bytes] = {}  # digest -> payload, this round and last
        self._seen: set[bytes] = set()           # digests of earlier rounds (replay check)
        self._served: list[str] = []
        self.fetch_failures: dict[bytes, str] = {}
        self.last_round_s: float | None = None  # wall time of the last full round (heartbeat)

    # --- helpers ---------------------------------------------------------------------

    def _fetch_payloads(self, wanted: dict[bytes, str], deadline: float) -> dict[bytes, bytes | None]:
        """Download ``{digest: author}`` in parallel, each bounded by ``deadline``.

        A failed download maps to None; why it failed is kept in ``self.fetch_failures``.
        """
        node = self.node
        exchange = node.exchange
        assert exchange is not None
        max_size = 16 * 1024 + 8 * sum(t.numel() for t in node.state.params.values())
        futures = {}
        for digest, author in wanted.items():
            if digest in self._payloads:
                continue
            timeout = max(0.5, deadline - time.time())
            futures[digest] = exchange.fetch_future(author, "update", digest.hex(), max_size=max_size,
                                                    timeout=timeout)
        out: dict[bytes, bytes | None] = {d: self._payloads.get(d) for d in wanted}
        for digest, future in futures.items():
            try:
                out[digest] = future.result(timeout=max(0.5, deadline - time.time()) + 1.0)
                self._payloads[digest] = out[digest]  # type: ignore[assignment]
            except (FetchError, concurrent.futures.TimeoutError) as error:
                log.info("could not fetch update %s from %s: %s", digest.hex()[:12], wanted[digest], error)
                out[digest] = None
                self.fetch_failures[digest] = (
                    "digest mismatch: served bytes differ from the commitment" if isinstance(error, DigestMismatch)
                    else f"payload not downloaded ({type(error).__name__})")
        return out

    # --- the round -------------------------------------------------------------------

    def play(self, r: int) -> RoundSummary:
        node = self.node
        started = time.time()
        assert node.exchange is not None
        before = node.exchange.stats()
        state = node.state
        node.heartbeat(role="training")

        # 1. train until the train deadline, then encode, commit and serve.
        train_end = node.clock.deadline(r, Phase.TRAIN) - PUBLISH_MARGIN_S
        update = node.contributor.contribute(state.params, state.version,
                                             deadline=time.monotonic() + (train_end - time.time()))
        self._commit(r, update)
        # 2. after the commit deadline: fetch what I must check, check, vote.
        sleep_until(node.clock.deadline(r, Phase.COMMIT))
        verdicts = self._check_and_vote(r, state, update)
        # 3. after the vote deadline: tally, fetch accepted payloads, merge.
        sleep_until(node.clock.deadline(r, Phase.VOTE))
        view = self._tally(r)
        authors = view.authors
        accepted_digests = view.accepted
        merged_ok = self._merge(r, state, view, verdicts)
        self._seen.update(authors)
        # 4. agree: compare with the majority, resync when in the minority.
        sleep_until(node.clock.deadline(r, Phase.VOTE) + AGREE_READ_SHARE * node.config.timing.agree_s)
        resynced = node.sync.agree(r, mine_ok=merged_ok)

        mine_accepted = update.committed_digest in accepted_digests
        self.accepted += int(mine_accepted)
        self.rejected += int(not mine_accepted)
        self.last_round_s = time.time() - started
        node.heartbeat(role="training")
        after = node.exchange.stats()
        self._forget_old_payloads(keep=set(authors))
        return RoundSummary(
            round=r, version_id=node.state.version.hex(), state_checksum=node.state.checksum.hex(),
            accepted=len(accepted_digests), rejected=len(authors) - len(accepted_digests),
            mine_accepted=mine_accepted, validation_loss=node.state.validation_loss,
            bytes_sent=after.bytes_sent - before.bytes_sent,
            bytes_received=after.bytes_received - before.bytes_received,
            seconds=time.time() - started, resynced=resynced, steps=update.steps,
        )

    def _round_view(self, r: int) -> tuple[dict[str, CommitRecord], dict[bytes, str], dict[bytes, list[str]]]:
        """This round's commitments, their authors by digest, and who checks which."""
        node = self.node
        commits = node.records.commits(r)
        authors = {bytes.fromhex(c.digest): peer for peer, c in commits.items()}
        return commits, authors, assignments(r, authors, list(commits), node.config.vote.checkers_per_update)

    def _check_and_vote(self, r: int, state: ModelState, update: LocalUpdate) -> dict[bytes, Verdict]:
        node = self.node
        commits, authors, table = self._round_view(r)
        mine = {d: authors[d] for d, who in table.items() if node.identity.peer_id in who}
        payloads = self._fetch_payloads(mine, node.clock.deadline(r, Phase.VOTE) - 2 * PUBLISH_MARGIN_S)
        submissions = [Submission(authors[d], d, bytes.fromhex(commits[authors[d]].base_version),
                                  commits[authors[d]].samples, payloads[d],
                                  self.fetch_failures.get(d, "payload not downloaded")) for d in sorted(mine)]
        # state.validation_loss, when known, is this checker's loss of these very params
        # (measured at the merge that made them, on the same held-out batches).
        verdicts = node.checker.check_round(state.params, state.version, submissions, seen=self._seen,
                                            loss_before=state.validation_loss,
                                            own_norms=[update.sent_norm], round_size=len(authors))
        if verdicts:
            node.records.publish_votes(r, ballot(node.identity.peer_id, verdicts))
        return verdicts

    def _tally(self, r: int) -> RoundTally:
        """Votes counted from the final view of the round's commitments."""
        commits, authors, table = self._round_view(r)
        records = self.node.records.votes(r)
        ballots = {voter: {bytes.fromhex(d): v.accept for d, v in rec.votes.items()}
                   for voter, rec in records.items()}
        reasons = {voter: {bytes.fromhex(d): v.reason for d, v in rec.votes.items() if not v.accept}
                   for voter, rec in records.items()}
        counts = tally(ballots, table)
        if len(authors) == 1:  # a lone committer has nobody to check it and nobody to harm
            counts = {d: Tally(1, 0) for d in authors}
        return RoundTally(commits, authors, counts, common_rejection(reasons, table))

    def _commit(self, r: int, update: LocalUpdate) -> None:
        node = self.node
        assert node.exchange is not None
        key = update.committed_digest.hex()
        node.exchange.serve("update", key, update.payload)  # served under the committed digest
        self._served.append(key)
        self._payloads[update.committed_digest] = update.payload
        node.records.publish_commit(r, CommitRecord(
            peer_id=node.identity.peer_id, digest=key, size=len(update.payload),
            samples=max(1, update.samples), base_version=update.base_version.hex(),
            train_loss=_finite(update.train_loss),
        ))

    def _merge(self, r: int, state: ModelState, view: RoundTally, my_verdicts: dict[bytes, Verdict]) -> bool:
        """Compute, save and publish V(r+1); False when this peer cannot merge faithfully."""
        node = self.node
        accepted, authors, commits, counts = view.accepted, view.authors, view.commits, view.counts
        assert node.store is not None
        payloads = self._fetch_payloads({d: authors[d] for d in accepted},
                                        node.clock.deadline(r, Phase.VOTE) + 0.5 * node.config.timing.agree_s)
        updates: list[AcceptedUpdate] = []
        for digest in accepted:
            payload = payloads.get(digest)
            if payload is None:
                log.warning("accepted update %s could not be fetched: this peer will resync", digest.hex()[:12])
                return False
            try:
                tensors = decode_update(payload)
            except ProtocolError as error:
                log.warning("accepted update %s does not decode here (%s): this peer will resync",
                            digest.hex()[:12], error)
                return False
            updates.append(AcceptedUpdate(digest, commits[authors[digest]].samples, tensors))
        try:
            result = next_version(state.params, state.version, updates, state.outer)
        except MergeError as error:  # only a dishonest majority accepts such an update
            log.warning("the accepted updates do not merge here (%s): this peer will resync", error)
            return False
        contributions = tuple(
            Contribution(
                peer_id=authors[d], digest=d.hex(), samples=commits[authors[d]].samples,
                accepted=counts[d].accepted, votes_for=counts[d].votes_for,
                votes_against=counts[d].votes_against,
                loss_delta=my_verdicts[d].loss_delta if d in my_verdicts else None,
                reason=view.reason(d, my_verdicts.get(d)),
            )
            for d in sorted(authors)
        )
        new = ModelState(params=result.params, outer=state.outer, version=result.version_id, round=r + 1,
                         checksum=result.state_checksum, validation_loss=node.checker.loss(result.params))
        new.save(node.store, new.commit_for(parent=state.version, produced_in=r, contributions=contributions))
        node.sync.adopt(new)
        node.records.publish_result(r, ResultRecord(
            peer_id=node.identity.peer_id, version_id=new.version.hex(), state_checksum=new.checksum.hex(),
            accepted=[d.hex() for d in result.accepted][:64],
        ))
        return True

    def _forget_old_payloads(self, keep: set[bytes]) -> None:
        self._payloads = {d: p for d, p in self._payloads.items() if d in keep}
        self.fetch_failures.clear()
        assert self.node.exchange is not None
        while len(self._served) > 3:
            self.node.exchange.unserve("update", self._served.pop(0))


def ballot(voter: str, verdicts: dict[bytes, Verdict]) -> VoteRecord:
    """This peer's signed-record form of its verdicts, with the reasons for rejections
    shortened to fit; a ballot too big to carry reasons goes without them."""
    def record(with_reasons: bool) -> VoteRecord:
        return VoteRecord(voter=voter, votes={
            d.hex(): VerdictRecord(accept=v.accept, loss_delta=_finite(v.loss_delta),
                                   reason=_short_reason(v.reason) if with_reasons and not v.accept else "")
            for d, v in verdicts.items()
        })
    try:
        return record(with_reasons=True)
    except ValidationError:
        return record(with_reasons=False)


def _short_reason(reason: str) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in reason)  # printable ASCII only
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def _finite(value: float | None) -> float:
    """DHT records carry finite floats only; a missing or non-finite value becomes 0."""
    return value if value is not None and math.isfinite(value) else 0.0
