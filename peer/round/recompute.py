"""Adopt only what you can recompute.

A version is the deterministic result of its parent and the updates its round accepted,
and "accepted" means a majority of the assigned checkers' signed ballots. So a peer
never needs to take a state on someone's word: given the parent (which it holds and
trusts), the round's signed commitments and ballots (from the DHT, whose validators
checked the signatures) and the accepted payloads (fetched by digest, from their authors
or from any peer that merged them), it recomputes the version itself. A published result
that does not come out of that recomputation is not adopted, however many identities
published it.

The decision part is pure (:func:`claims`, :func:`commit_views`, :func:`matching_decision`);
:class:`Recomputer` adds the store, the records and the payload downloads.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from swarmtrain.dht import CommitRecord, ResultRecord, VoteRecord
from swarmtrain.peer.config import SwarmConfig, max_samples
from swarmtrain.peer.round.commitset import by_named, commit_set_digest, rebuild
from swarmtrain.peer.round.context import RoundContext, max_update_bytes
from swarmtrain.peer.round.decision import Commitment, RoundDecision, Vote, decide
from swarmtrain.peer.round.merge import OuterOptimizer, RoundMerge, merge_round
from swarmtrain.peer.round.payloads import Payloads
from swarmtrain.peer.round.state import ModelState, load_version
from swarmtrain.peer.round.vote import Verdict
from swarmtrain.peer.store.versions import Contribution, StoreError, VersionStore
from swarmtrain.protocol import version_id
from swarmtrain.protocol.work import IdentityWork

Ballots = dict[str, dict[bytes, Vote]]


@dataclass(frozen=True)
class Claim:
    """One published outcome of a round: what ``holders`` say it produced."""

    round: int
    version: str          # hex
    checksum: str         # hex
    accepted: frozenset[bytes]
    holders: tuple[str, ...]

    def names(self, state: ModelState) -> bool:
        return state.version.hex() == self.version and state.checksum.hex() == self.checksum


def claims(round_: int, results: Mapping[str, ResultRecord]) -> list[Claim]:
    """The distinct results published for ``round_``, most holders first (ties: the
    smaller version id). A claim is only a candidate: it is adopted after recomputation."""
    groups: dict[tuple[str, str, frozenset[bytes]], list[str]] = {}
    for peer, rec in results.items():
        key = (rec.version_id, rec.state_checksum, frozenset(bytes.fromhex(d) for d in rec.accepted))
        groups.setdefault(key, []).append(peer)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0][0], item[0][1]))
    return [Claim(round_, v, c, accepted, tuple(sorted(holders))) for (v, c, accepted), holders in ordered]


def commitments_of(commits: Mapping[str, CommitRecord]) -> dict[str, Commitment]:
    return {peer: Commitment(peer, bytes.fromhex(c.digest), c.samples, c.work) for peer, c in commits.items()}


def ballots_of(votes: Mapping[str, VoteRecord]) -> Ballots:
    return {voter: {bytes.fromhex(d): Vote(v.accept, v.reason) for d, v in rec.votes.items()}
            for voter, rec in votes.items()}


# Named sets a peer tries to rebuild a round (the most named first).
MAX_REBUILT_SETS = 3


def named_sets(votes: Mapping[str, VoteRecord]) -> dict[str, bytes]:
    """The commitment set each voter says it judged (voters whose ballot names none are left out)."""
    return {voter: bytes.fromhex(rec.commit_set) for voter, rec in votes.items() if rec.commit_set is not None}


def commit_views(frozen: Mapping[str, CommitRecord] | None, now: Mapping[str, CommitRecord],
                 votes: Mapping[str, VoteRecord], standing: Collection[str] = ()) -> list[dict[str, CommitRecord]]:
    """The commitment sets a round may have been decided over, in the order to try them.

    Peers freeze the set at the commit deadline, and one that arrived right at the
    deadline can be in one peer's set and not in another's. The candidates: this peer's
    own frozen set (when it played the round), every commitment readable now, those that
    some ballot judged (a commitment nobody judged came after the checkers had frozen
    theirs), and each set a ballot names (:mod:`.commitset`) rebuilt from those readable
    now. The set most voters with standing named comes first, so every peer that can
    build it decides over it.
    """
    named = named_sets(votes)
    judged = {d for rec in votes.values() for d in rec.votes}
    views: list[dict[str, CommitRecord]] = []
    for view in (frozen, now, {p: c for p, c in now.items() if c.digest in judged}):
        if view is not None and dict(view) not in views:
            views.append(dict(view))
    digest_of = lambda view: commit_set_digest(commitments_of(view))  # noqa: E731
    have = {digest_of(view) for view in views}
    # Rebuilding costs up to 2^MAX_DOUBTFUL hashes, so only for a few sets, named by
    # voters with standing: fresh identities naming made-up hashes cost nothing.
    targets = sorted({d for v, d in named.items() if v in standing} - have,
                     key=lambda d: (-sum(1 for v, n in named.items() if n == d and v in standing), d))
    for target in targets[:MAX_REBUILT_SETS]:
        voters = [v for v, d in named.items() if d == target]
        seen = {d for v in voters for d in votes[v].votes}
        doubtful = [a for a, c in now.items() if c.digest not in seen]
        rebuilt = rebuild(target, commitments_of(now), doubtful)
        if rebuilt is not None:
            views.append({a: now[a] for a in rebuilt})
    return by_named(views, digest_of, named, standing)


def matching_decision(round_: int, parent: bytes, claim: Claim, views: list[dict[str, CommitRecord]],
                      ballots: Ballots, *, config: SwarmConfig, standing: frozenset[str],
                      work: IdentityWork | None = None,
                      founder: str | None = None) -> tuple[RoundDecision, dict[str, CommitRecord]] | None:
    """The decision, over one of ``views``, whose accepted updates include all of the
    claim's; None when the claim cannot come out of these records on ``parent``.

    The merge may still refuse some of the decision's accepted updates (payloads that do
    not open for the model), so the claim's set may be smaller; the merge settles that.
    """
    if version_id(parent, sorted(claim.accepted)) != bytes.fromhex(claim.version):
        return None  # not a child of this parent, or its accepted list is not what its id says
    for view in views:
        decision = decide(round_, parent, commitments_of(view), ballots,
                          checkers_per_update=config.vote.checkers_per_update,
                          max_samples=max_samples(config), standing=standing, work=work, founder=founder)
        if claim.accepted <= set(decision.accepted):
            return decision, view
    return None


def standing_of(store: VersionStore, version: bytes, founder: str | None = None) -> frozenset[str]:
    """Who has standing in the round after ``version``: the authors whose updates were
    merged into it (from its commit in the store), or for the genesis its ``founder``
    (the genesis' creator), so a new swarm's round 0 is not checked by whoever shows up."""
    try:
        commit = store.commit(version.hex())
    except StoreError:
        return frozenset()
    if commit.is_genesis:
        return frozenset() if founder is None else frozenset({founder})
    return frozenset(c.peer_id for c in commit.contributions if c.accepted)


def next_state(config: SwarmConfig, r: int, parent: ModelState, decision: RoundDecision,
               payloads: Mapping[bytes, bytes]) -> tuple[ModelState, RoundMerge]:
    """V(r+1) from ``parent`` and the decision's accepted payloads (the one merge)."""
    outcome = merge_round(parent.params, parent.version,
                          {d: (decision.weights[d], payloads[d]) for d in decision.accepted},
                          parent.outer, codec=config.codec, clip_ratio=config.vote.max_norm_ratio)
    result = outcome.version
    new = ModelState(params=result.params, outer=parent.outer, version=result.version_id, round=r + 1,
                     checksum=result.state_checksum)
    return new, outcome


def contributions_of(decision: RoundDecision, commits: Mapping[str, Commitment], outcome: RoundMerge,
                     my_verdicts: Mapping[bytes, Verdict]) -> tuple[Contribution, ...]:
    """The history entry's account of every commitment of the round, and why (this
    peer's own reason where it judged and the swarm rejected)."""
    accepted = set(outcome.version.accepted)
    return tuple(
        Contribution(
            peer_id=decision.authors[d], digest=d.hex(), samples=commits[decision.authors[d]].samples,
            accepted=d in accepted, votes_for=decision.counts[d].votes_for,
            votes_against=decision.counts[d].votes_against,
            loss_delta=my_verdicts[d].loss_delta if d in my_verdicts else None,
            reason=outcome.refused.get(d) or decision.reason(d, my_verdicts.get(d)),
        )
        for d in sorted(decision.authors)
    ) + tuple(
        Contribution(peer_id=author, digest=commits[author].digest.hex(), samples=commits[author].samples,
                     accepted=False, votes_for=0, votes_against=0, loss_delta=None, reason=why)
        for author, why in sorted(decision.refused.items())
    )


def keep_version(store: VersionStore, kept: Payloads, r: int, parent: bytes, new: ModelState,
                 decision: RoundDecision, commits: Mapping[str, CommitRecord], outcome: RoundMerge,
                 payloads: Mapping[bytes, bytes], my_verdicts: Mapping[bytes, Verdict]) -> None:
    """Save a merged V(r+1) with its history entry, and keep (and serve) the payloads it
    accepted, so others can recompute it from this peer (its own merge and a recomputed one alike)."""
    new.save(store, new.commit_for(parent=parent, produced_in=r,
                                   contributions=contributions_of(decision, commitments_of(commits), outcome,
                                                                  my_verdicts)))
    for digest in decision.accepted:
        kept.keep(r, digest, payloads[digest])


class Recomputer:
    """Re-derives a claimed version from a parent this peer holds."""

    def __init__(self, ctx: RoundContext, payloads: Payloads) -> None:
        self.ctx = ctx
        self.payloads = payloads

    def recompute(self, r: int, parent_version: bytes, claim: Claim, *, deadline: float,
                  frozen: Mapping[str, CommitRecord] | None = None, measure_loss: bool = True) -> ModelState | str:
        """The claimed V(r+1), recomputed, checked and stored; or why it cannot be."""
        ctx = self.ctx
        try:
            # A fresh outer optimizer: the held state's may already carry this peer's own merge.
            parent = load_version(ctx.store, parent_version.hex(), OuterOptimizer(ctx.config.outer), next_round=r)
        except StoreError:
            return f"its parent {parent_version.hex()[:12]} is not held here"
        votes = ctx.records.votes(r)
        ballots = ballots_of(votes)
        standing = standing_of(ctx.store, parent.version, ctx.founder)
        views = commit_views(frozen, ctx.records.commits(r), votes, standing)
        found = matching_decision(r, parent.version, claim, views, ballots, config=ctx.config,
                                  standing=standing, work=ctx.work, founder=ctx.founder)
        if found is None:
            return (f"its {len(claim.accepted)} accepted update(s) do not follow from version "
                    f"{parent_version.hex()[:12]} and the signed commitments and ballots of round {r}")
        decision, commits = found
        me = ctx.peer_id
        sources = {d: [decision.authors[d], *(h for h in claim.holders if h not in (me, decision.authors[d]))]
                   for d in decision.accepted}
        got = self.payloads.fetch(sources, max_size=max_update_bytes(parent.params), deadline=deadline)
        missing = [d for d in decision.accepted if got.get(d) is None]
        if missing:
            return (f"update {missing[0].hex()[:12]} could not be fetched from its author or any of the "
                    f"{len(claim.holders)} peer(s) that merged it")
        payloads = {d: p for d, p in got.items() if p is not None}
        new, outcome = next_state(ctx.config, r, parent, decision, payloads)
        if not claim.names(new):
            return (f"recomputing it gives version {new.version.hex()[:12]} with checksum "
                    f"{new.checksum.hex()[:12]}, not the published {claim.version[:12]}/{claim.checksum[:12]}")
        if measure_loss:
            new.validation_loss = ctx.checker.loss(new.params)
        keep_version(ctx.store, self.payloads, r, parent.version, new, decision, commits, outcome, payloads, {})
        return new
