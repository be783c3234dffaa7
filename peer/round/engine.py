"""One round over the network: commit, check and vote, decide and merge, agree.

The round's math is shared with the simulator (:mod:`.decision`, :mod:`.check`,
:mod:`.merge`); this module adds the DHT records, the payload transfers and the phase
deadlines. Training is not here: it runs on its own thread the whole time, and the
update this round commits is the one the caller encoded from its snapshot at the
commit point. A peer that cannot merge what the others merged (a payload it could not
fetch, a different vote view) ends up in the minority at the agree step and downloads
the majority's state (:mod:`.sync`).

Each phase is a method of its own, so a test can drive several peers through a round
in lockstep; :meth:`RoundEngine.play` runs them in order on the context's clock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from swarmtrain.dht import REASON_CHARS, CommitRecord, ResultRecord, ValidationError, VoteRecord
from swarmtrain.dht import Verdict as VerdictRecord
from swarmtrain.peer.config import max_samples
from swarmtrain.peer.round.check import Submission, colluding_verdicts
from swarmtrain.peer.round.clock import Phase
from swarmtrain.peer.round.context import RoundContext, max_update_bytes
from swarmtrain.peer.round.decision import RoundDecision, admit, checker_table, decide, round_weight
from swarmtrain.peer.round.offences import OFFENCE_WINDOW, cooling_off
from swarmtrain.peer.round.commitset import commit_set_digest
from swarmtrain.peer.round.recompute import (
    ballots_of, commit_views, commitments_of, keep_version, next_state, standing_of,
)
from swarmtrain.peer.round.state import ModelState
from swarmtrain.peer.round.sync import StateSync
from swarmtrain.peer.round.vote import Verdict
from swarmtrain.peer.training import faults
from swarmtrain.peer.training.contribute import LocalUpdate

log = logging.getLogger(__name__)

# Seconds kept free before a deadline for publishing (DHT stores take ~0.1-0.5 s here).
PUBLISH_MARGIN_S = 0.8
# Read the round's results this far into the agree phase (results are published at its start).
AGREE_READ_SHARE = 0.6


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


@dataclass(frozen=True)
class RoundResult:
    """The version to train from next (V(r+1), or V(r) when the round could not be
    resolved here) and what the round did."""

    state: ModelState
    summary: RoundSummary


class RoundEngine:
    def __init__(self, ctx: RoundContext, sync: StateSync, *, fault: str | None = None) -> None:
        self.ctx = ctx
        self.sync = sync
        self.fault = fault  # only "collude" changes how this peer votes
        self.accepted = 0      # this peer's updates accepted / rejected so far
        self.rejected = 0
        self.last_round_s: float | None = None  # commit to adoption, last round (heartbeat)
        self.payloads = sync.payloads
        self._seen: set[bytes] = set()           # digests of earlier rounds (replay check)
        self._commits: dict[int, dict[str, CommitRecord]] = {}  # frozen at the commit deadline

    # --- the phases ------------------------------------------------------------------

    def commit(self, r: int, update: LocalUpdate) -> None:
        """Serve the payload under the committed digest and publish the commitment."""
        # Kept (and served from disk) like the payloads this peer merges: checkers fetch
        # it now, and peers that replay the round fetch it later.
        self.payloads.prune(r)
        self.payloads.keep(r, update.committed_digest, update.payload,
                           reveal_at=self.ctx.phases.deadline(r, Phase.COMMIT))
        self.ctx.records.publish_commit(r, CommitRecord(
            peer_id=self.ctx.peer_id, digest=update.committed_digest.hex(), size=len(update.payload),
            samples=max(1, update.samples), base_version=update.base_version.hex(),
            train_loss=_finite(update.train_loss), work=self.ctx.work_nonce,
        ))

    def frozen_commits(self, r: int) -> dict[str, CommitRecord]:
        """Round ``r``'s commitments as first read after its commit deadline, kept for the
        rest of the round: a commitment published later is ignored, so it can neither join
        the checker draw nor shift the tally of updates already judged."""
        if r not in self._commits:
            self._commits = {r: self.ctx.records.commits(r), **{k: v for k, v in self._commits.items() if k >= r - 1}}
        return self._commits[r]

    def standing(self, state: ModelState) -> frozenset[str]:
        """Who has standing in the round after ``state`` (see :func:`standing_of`)."""
        return standing_of(self.ctx.store, state.version, self.ctx.founder)

    def cooling_off(self, state: ModelState) -> dict[str, str]:
        """Authors cooling off after ``state`` (:mod:`.offences`), from this peer's history
        entries of the versions leading to it."""
        return cooling_off([(c.round, c.contributions)
                            for c in self.ctx.store.lineage(state.version.hex(), OFFENCE_WINDOW)])

    def merged_into(self, state: ModelState) -> dict[bytes, bytes]:
        """The payloads merged into ``state`` that this peer holds (near-copies of them are
        rejected: :mod:`.copies`)."""
        lineage = self.ctx.store.lineage(state.version.hex(), 1)
        accepted = [bytes.fromhex(c.digest) for c in lineage[0].accepted] if lineage else []
        return self.payloads.held(accepted)

    def check_and_vote(self, r: int, state: ModelState, update: LocalUpdate) -> dict[bytes, Verdict]:
        """After the commit deadline: fetch what this peer must check, check it, vote."""
        ctx = self.ctx
        commits = self.frozen_commits(r)
        commitments = commitments_of(commits)
        judged_set = commit_set_digest(commitments)  # what this peer's ballot says it judged
        standing = self.standing(state)
        admitted = admit(r, commitments, standing=standing, work=ctx.work).admitted
        table = checker_table(r, admitted, ctx.config.vote.checkers_per_update, standing, state.version,
                              ctx.founder)
        authors = {c.digest: peer for peer, c in admitted.items()}
        mine = {d: authors[d] for d, who in table.items() if ctx.peer_id in who}
        if faults.colludes(self.fault):
            verdicts = colluding_verdicts({d: faults.is_colluder_commitment(commits[a].train_loss)
                                           for d, a in mine.items()})
            if verdicts:
                ctx.records.publish_votes(r, ballot(ctx.peer_id, verdicts, judged_set))
            return verdicts
        # Repeat offenders' updates are not downloaded: rejected unread, for a reason
        # that is no offence, until their offences age out of the window.
        cooling = self.cooling_off(state)
        payloads = self.payloads.fetch({d: [a] for d, a in mine.items() if a not in cooling},
                                       max_size=max_update_bytes(state.params),
                                       deadline=ctx.phases.deadline(r, Phase.VOTE) - 2 * PUBLISH_MARGIN_S)
        submissions = [Submission(authors[d], d, bytes.fromhex(commits[authors[d]].base_version),
                                  commits[authors[d]].samples, payloads.get(d),
                                  cooling.get(authors[d]) or self.payloads.failures.get(d, "payload not downloaded"))
                       for d in sorted(mine)]
        # state.validation_loss, when known, is this checker's loss of these very params
        # (measured at the merge that made them, on the same held-out batches).
        verdicts = ctx.checker.check_round(state.params, state.version, submissions, seen=self._seen,
                                           loss_before=state.validation_loss, own=update,
                                           round_samples=round_weight(admitted, max_samples(ctx.config)),
                                           merged_last_round=self.merged_into(state))
        if verdicts:
            ctx.records.publish_votes(r, ballot(ctx.peer_id, verdicts, judged_set))
        return verdicts

    def decide(self, r: int, state: ModelState) -> tuple[RoundDecision, dict[str, CommitRecord]]:
        """After the vote deadline: the round's decision from the ballots as read now,
        over the commitment set most voters judged (this peer's frozen one unless the
        ballots name another it can build: :func:`commit_views`)."""
        ctx = self.ctx
        votes = ctx.records.votes(r)
        standing = self.standing(state)
        frozen = self.frozen_commits(r)
        # Reading the commitments again costs a DHT read, needed only when some ballot
        # names a set other than this peer's own.
        mine = commit_set_digest(commitments_of(frozen)).hex()
        named_other = any(rec.commit_set not in (None, mine) for rec in votes.values())
        commits = commit_views(frozen, ctx.records.commits(r), votes, standing)[0] if named_other else frozen
        decision = decide(r, state.version, commitments_of(commits), ballots_of(votes),
                          checkers_per_update=ctx.config.vote.checkers_per_update,
                          max_samples=max_samples(ctx.config), standing=standing, work=ctx.work,
                          founder=ctx.founder)
        return decision, commits

    def merge(self, r: int, state: ModelState, decision: RoundDecision, commits: dict[str, CommitRecord],
              my_verdicts: dict[bytes, Verdict]) -> ModelState | None:
        """Compute, save, serve and publish V(r+1); None when this peer cannot merge faithfully."""
        ctx = self.ctx
        accepted = decision.accepted
        payloads = self.payloads.fetch({d: [decision.authors[d]] for d in accepted},
                                       max_size=max_update_bytes(state.params),
                                       deadline=ctx.phases.deadline(r, Phase.VOTE) + 0.5 * ctx.config.timing.agree_s)
        missing = [d for d in accepted if payloads.get(d) is None]
        if missing:
            log.warning("accepted update %s could not be fetched (%s): this peer will recompute the others' result",
                        missing[0].hex()[:12], self.payloads.failures.get(missing[0], "no reason recorded"))
            return None
        new, outcome = next_state(ctx.config, r, state, decision, payloads)  # type: ignore[arg-type]
        for digest, why in outcome.refused.items():
            ctx.announce(f"round {r}: update {digest.hex()[:12]} of {decision.authors[digest][:12]} was "
                         f"accepted by its checkers but {why}")
        new.validation_loss = ctx.checker.loss(new.params)
        keep_version(ctx.store, self.payloads, r, state.version, new, decision, commits, outcome,
                     payloads, my_verdicts)  # type: ignore[arg-type]
        self.sync.serve(new)
        ctx.records.publish_result(r, ResultRecord(
            peer_id=ctx.peer_id, version_id=new.version.hex(), state_checksum=new.checksum.hex(),
            accepted=[d.hex() for d in outcome.version.accepted][:64],
        ))
        return new

    # --- the whole round -------------------------------------------------------------

    def play(self, r: int, state: ModelState, update: LocalUpdate,
             on_merged: Callable[[ModelState], None] | None = None) -> RoundResult:
        """Round ``r`` from its commit point to the agreed next version.

        ``on_merged`` gets this peer's own V(r+1) as soon as it is merged, before the
        agree step: training moves onto it then instead of a phase later (the agree step
        almost always confirms it; when it does not, the caller moves again).
        """
        ctx = self.ctx
        clock, phases = ctx.clock, ctx.phases
        started = clock.time()
        before = ctx.exchange.stats()
        self.commit(r, update)
        clock.sleep_until(phases.deadline(r, Phase.COMMIT))
        verdicts = self.check_and_vote(r, state, update)
        clock.sleep_until(phases.deadline(r, Phase.VOTE))
        decision, commits = self.decide(r, state)
        merged = self.merge(r, state, decision, commits, verdicts)
        if merged is not None and on_merged is not None:
            on_merged(merged)
        self._seen.update(decision.authors)
        clock.sleep_until(phases.deadline(r, Phase.VOTE) + AGREE_READ_SHARE * ctx.config.timing.agree_s)
        new, resynced = self.sync.agree(r, state, merged, frozen=commits)

        mine_accepted = decision.is_accepted(update.committed_digest)
        self.accepted += int(mine_accepted)
        self.rejected += int(not mine_accepted)
        self.last_round_s = clock.time() - started
        after = ctx.exchange.stats()
        self.payloads.forget(keep=set(decision.authors))
        summary = RoundSummary(
            round=r, version_id=new.version.hex(), state_checksum=new.checksum.hex(),
            accepted=len(decision.accepted), rejected=len(decision.rejected),
            mine_accepted=mine_accepted, validation_loss=new.validation_loss,
            bytes_sent=after.bytes_sent - before.bytes_sent,
            bytes_received=after.bytes_received - before.bytes_received,
            seconds=self.last_round_s, resynced=resynced, steps=update.steps,
        )
        return RoundResult(new, summary)

def ballot(voter: str, verdicts: dict[bytes, Verdict], commit_set: bytes | None = None) -> VoteRecord:
    """This peer's signed-record form of its verdicts on the commitment set with hash
    ``commit_set``, with the reasons for rejections shortened to fit; a ballot too big to
    carry reasons goes without them."""
    def record(with_reasons: bool) -> VoteRecord:
        return VoteRecord(voter=voter, commit_set=None if commit_set is None else commit_set.hex(), votes={
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

