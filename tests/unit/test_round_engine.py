"""Whole rounds of the real engine on a manual clock, with in-memory records and blobs."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from memswarm import fake_peer_id, lockstep_round, memory_swarm

from swarmtrain.peer.app.cli import main
from swarmtrain.peer.exchange.errors import PeerBusy
from swarmtrain.dht import CommitRecord, ResultRecord, Verdict, VoteRecord
from swarmtrain.peer.config import max_samples, preset
from swarmtrain.peer.round.clock import Phase
from swarmtrain.peer.round.decision import Vote, decide
from swarmtrain.peer.round.engine import PUBLISH_MARGIN_S
from swarmtrain.peer.round.recompute import commitments_of, standing_of
from swarmtrain.peer.training.worker import TrainingWorker

CONFIG = preset("smoke").replace(task="synthetic")


def test_peers_in_lockstep_agree_and_reject_the_faulty_one(tmp_path: Path) -> None:
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c", "flip"], faults={"flip": "sign-flip"})
    losses = [peers[0].ctx.checker.loss(peers[0].state.params)]
    for r in range(3):
        lockstep_round(peers, clock, r, before=30, after=10)
        versions = {(p.state.version, p.state.checksum) for p in peers}
        assert len(versions) == 1, "every peer computes the same next version on its own"
        assert all(p.state.round == r + 1 for p in peers)
        assert all(p.tracker.base_version == p.state.version for p in peers)
        losses.append(peers[0].ctx.checker.loss(peers[0].state.params))
        # The engine's decision is the pure function's on the same records.
        commits = table.rows[("commits", r)]
        history = peers[0].ctx.store.commit(peers[0].state.version.hex())
        flip = next(c for c in history.contributions if c.peer_id == fake_peer_id("flip"))
        assert not flip.accepted and ("points against" in flip.reason or "loss rose" in flip.reason), flip.reason
        assert {c.peer_id for c in history.accepted} == {fake_peer_id(n) for n in "abc"}
        ballots = {voter: {bytes.fromhex(d): Vote(v.accept, v.reason) for d, v in rec.votes.items()}
                   for voter, rec in table.rows[("votes", r)].items()}
        parent = bytes.fromhex(history.parent_id or "")
        founder = peers[0].ctx.founder
        pure = decide(r, parent, commitments_of(commits), ballots,
                      checkers_per_update=CONFIG.vote.checkers_per_update, max_samples=max_samples(CONFIG),
                      standing=standing_of(peers[0].ctx.store, parent, founder), founder=founder)
        assert pure.next_version == peers[0].state.version
    assert losses[-1] < losses[0]
    assert not any("resync" in line for p in peers for line in p.lines)


class _WaitsForTraining:
    """Records that, before each write of the round, wait until the training thread has
    taken a further step: proof that training goes on through commit, vote and merge."""

    def __init__(self, inner: object, worker: TrainingWorker) -> None:
        self.inner = inner
        self.worker = worker
        self.steps_at: list[tuple[str, int]] = []

    def _advance(self, what: str) -> None:
        start = self.worker.stats().steps
        deadline = time.monotonic() + 30.0
        while self.worker.stats().steps <= start:
            assert time.monotonic() < deadline, f"training did not go on during {what}"
            time.sleep(0.001)
        self.steps_at.append((what, self.worker.stats().steps))

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if name.startswith("publish_"):
            def publish(*args: object, **kwargs: object) -> object:
                self._advance(name)
                return attr(*args, **kwargs)
            return publish
        return attr


def test_training_goes_on_through_the_rounds_exchange_and_is_carried_over(tmp_path: Path) -> None:
    (peer,), clock, _ = memory_swarm(tmp_path, CONFIG, ["solo"])
    worker = TrainingWorker(peer.tracker)
    records = _WaitsForTraining(peer.ctx.records, worker)
    object.__setattr__(peer.ctx, "records", records)  # the context is frozen; swap for this test
    worker.start()
    try:
        for r in range(2):
            clock.sleep_until(peer.ctx.phases.deadline(r, Phase.TRAIN) - PUBLISH_MARGIN_S)
            while worker.stats().steps < 5 * (r + 1):  # some training before the commit point
                time.sleep(0.001)
            snap = worker.snapshot()
            update = peer.contributor.contribute(snap, peer.state.version)
            result = peer.engine.play(r, peer.state, update)
            assert result.state.round == r + 1 and result.summary.mine_accepted  # a lone committer
            worker.rebase(result.state.params, result.state.version)
            peer.state = result.state
            assert peer.tracker.base_version == peer.state.version
        # Steps were taken while the commit, the vote (none: a lone peer checks nothing)
        # and the result of each round were being published.
        whats = [what for what, _ in records.steps_at]
        assert whats.count("publish_commit") == 2 and whats.count("publish_result") == 2
        counts = [n for _, n in records.steps_at]
        assert counts == sorted(counts) and len(set(counts)) == len(counts)
        stats = worker.stats()
        assert 0 < stats.utilisation <= 1 and stats.samples == stats.steps * CONFIG.train.batch_size
    finally:
        worker.stop()


def test_a_late_joiner_replays_the_rounds_it_missed_and_never_commits_on_an_old_version(tmp_path: Path) -> None:
    peers, clock, _ = memory_swarm(tmp_path, CONFIG, ["a", "b", "late"])
    *early, late = peers
    for r in range(2):
        lockstep_round(early, clock, r, before=20, after=5)
    v2 = early[0].state
    # Nobody serves a state at all: replay needs only the records and the payloads. Without
    # the payloads the late peer knows V(2) exists but cannot re-derive it, so it must not
    # go on (and commit) from the genesis as if that were round 2's state.
    blobs = early[0].ctx.exchange.blobs  # type: ignore[attr-defined]
    for key in [k for k in blobs if k[1] == "state"]:
        del blobs[key]
    updates = {k: v for k, v in blobs.items() if k[1] == "update"}
    for key in updates:
        del blobs[key]
    stuck = late.sync.catch_up(2, late.state)
    assert stuck.round == 0 and stuck.version == late.state.version
    assert any("cannot re-derive" in line and "--trust-state" in line for line in late.lines)
    blobs.update(updates)
    caught = late.sync.catch_up(2, late.state)
    assert (caught.version, caught.checksum, caught.round) == (v2.version, v2.checksum, 2)
    assert late.sync.resyncs == 0  # a catch-up is not a disagreement
    assert any("replaying rounds 0-1" in line for line in late.lines)
    # It now keeps and serves those payloads itself, for whoever replays next.
    assert {k[2] for k in blobs if k[0] == late.ctx.peer_id and k[1] == "update"} >= {
        c.digest for c in late.ctx.store.commit(v2.version.hex()).accepted}


def test_a_minority_peer_that_cannot_resync_stays_on_the_version_it_agreed_on(tmp_path: Path) -> None:
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c"])
    lockstep_round(peers, clock, 0, before=20, after=0)
    a = peers[0]
    v1 = a.state
    # A majority for round 1 that nobody serves.
    for name in ("x", "y", "z"):
        table.rows.setdefault(("results", 1), {})[fake_peer_id(name)] = ResultRecord(
            peer_id=fake_peer_id(name), version_id="ab" * 32, state_checksum="cd" * 32, accepted=[])
    new, resynced = a.sync.agree(1, v1, None)
    assert new is v1 and not resynced and a.sync.resyncs == 0
    assert any("not the majority's" in line for line in a.lines)


def test_a_commitment_published_after_the_commit_deadline_is_ignored(tmp_path: Path) -> None:
    """A late commit used to join the checker draw at tally time: one late identity
    turned an honest update's 3-0 accept into a reject. The set is now frozen."""
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c", "d"])
    late = fake_peer_id("late")

    def late_commit_and_reject_everything() -> None:
        honest = table.rows[("commits", 0)]
        table.rows[("commits", 0)][late] = CommitRecord(
            peer_id=late, digest="ee" * 32, size=100, samples=1,
            base_version=peers[0].state.version.hex(), train_loss=1.0)
        table.rows.setdefault(("votes", 0), {})[late] = VoteRecord(voter=late, votes={
            c.digest: Verdict(accept=False, loss_delta=1.0, reason="late says no") for c in honest.values()})

    lockstep_round(peers, clock, 0, before=20, after=5, after_votes=late_commit_and_reject_everything)
    history = peers[0].ctx.store.commit(peers[0].state.version.hex())
    assert len(history.accepted) == 4 and late not in {c.peer_id for c in history.contributions}
    assert len({(p.state.version, p.state.checksum) for p in peers}) == 1


def test_a_majority_state_that_is_not_the_model_is_refused_even_with_a_matching_checksum(tmp_path: Path) -> None:
    """3 fake results against 3 honest ones once made a peer adopt a "state" of one float64
    tensor of 1e30 under a foreign name: the checksum only proved the bytes were what the
    fakes had chosen."""
    import torch

    from swarmtrain.peer.round.state import checksum_of
    from swarmtrain.peer.store.state import pack_state
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c"])
    lockstep_round(peers, clock, 0, before=20, after=0)
    a = peers[0]
    v1 = a.state
    forged = {"evil": torch.full((4,), 1e30, dtype=torch.float64)}
    checksum = checksum_of(forged, {})
    for name in ("x", "y", "z", "w"):
        fake = fake_peer_id(name)
        table.rows.setdefault(("results", 1), {})[fake] = ResultRecord(
            peer_id=fake, version_id="ab" * 32, state_checksum=checksum, accepted=[])
        a.ctx.exchange.blobs[(fake, "state", "ab" * 32)] = pack_state(forged, {})  # type: ignore[attr-defined]
    new, resynced = a.sync.agree(1, v1, None)
    assert new is v1 and not resynced
    assert not a.ctx.store.has_state("ab" * 32)


def test_a_state_is_fetched_from_several_holders_at_once_and_bad_ones_are_skipped(tmp_path: Path) -> None:
    """Holders that stall or serve other bytes cost nothing but their own request: they
    are asked in parallel with the others, and the first state that verifies wins."""
    import concurrent.futures

    from swarmtrain.peer.exchange.errors import FetchTimeout
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c", "late"])
    *early, late = peers
    lockstep_round(early, clock, 0, before=20, after=0)
    v1 = early[0].state
    exchange = late.ctx.exchange
    requested: list[str] = []
    staller, forger = fake_peer_id("staller"), fake_peer_id("forger")
    exchange.blobs[(forger, "state", v1.version.hex())] = b"not a state"  # type: ignore[attr-defined]
    real_fetch_future = exchange.fetch_future

    def fetch_future(peer_id: str, kind: str, digest_hex: str, **kwargs: object) -> concurrent.futures.Future[bytes]:
        if kind != "state":
            return real_fetch_future(peer_id, kind, digest_hex, **kwargs)  # type: ignore[arg-type]
        requested.append(peer_id)
        assert kwargs.get("stall_timeout"), "every state request is bounded by a stall timeout"
        if peer_id == staller:
            future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            future.set_exception(FetchTimeout("stalled between frames", peer_id=peer_id))
            return future
        return real_fetch_future(peer_id, kind, digest_hex, **kwargs)  # type: ignore[arg-type]

    exchange.fetch_future = fetch_future  # type: ignore[method-assign]
    for fake in (staller, forger):
        table.rows[("results", 0)][fake] = table.rows[("results", 0)][fake_peer_id("a")]
    # The round cannot be replayed (its payloads are gone), and this peer's user said
    # --trust-state: the state is downloaded on the holders' word.
    for key in [k for k in exchange.blobs if k[1] == "update"]:  # type: ignore[attr-defined]
        del exchange.blobs[key]  # type: ignore[attr-defined]
    late.sync.trust_states = True
    caught = late.sync.catch_up(1, late.state)
    assert (caught.version, caught.checksum) == (v1.version, v1.checksum)
    assert len(requested) >= 3 and len(set(requested)) == len(requested)
    assert any("ON TRUST" in line for line in late.lines)
    assert any("synced version" in line for line in late.lines)


def test_a_repeat_offender_is_cooled_off_and_its_updates_are_not_downloaded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c", "nan"], faults={"nan": "nan"})
    offender = fake_peer_id("nan")
    for r in range(5):
        lockstep_round(peers, clock, r, before=20, after=5)
    for p in peers[:3]:
        entries = [p.ctx.store.commit(p.state.version.hex())]
        while entries[-1].parent_id is not None:
            entries.append(p.ctx.store.commit(entries[-1].parent_id))
        reasons = {e.round: next(c.reason for c in e.contributions if c.peer_id == offender) for e in entries
                   if any(c.peer_id == offender for c in e.contributions)}
        cooled = [r for r, why in reasons.items() if why.startswith("cooling off")]
        # Rejected for its NaNs until this peer saw 3 of them itself, then unread.
        assert cooled and min(cooled) >= 3, reasons
        assert all("NaN" in why or why.startswith(("cooling off", "checkers: ")) for why in reasons.values()), reasons
        cooled_digests = {c.digest for e in entries if e.round in cooled for c in e.contributions
                          if c.peer_id == offender}
        assert not any(who == offender and digest in cooled_digests
                       for who, _, digest in p.ctx.exchange.fetched)  # type: ignore[attr-defined]
        # Honest peers are never cooled off.
        assert not any(c.reason.startswith("cooling off") for e in entries for c in e.contributions
                       if c.peer_id != offender)
    assert len({p.state.version for p in peers[:3]}) == 1
    # `swarmtrain log --peers` shows the records behind it.
    capsys.readouterr()
    assert main(["log", "--peers", "--json", "--data-dir", str(tmp_path / "a")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[offender]["cooling_off"] and shown[offender]["offences"] >= 3
    assert shown[offender]["accepted"] == 0 and "NaN" in shown[offender]["last_offence"]
    assert all(shown[fake_peer_id(n)] == {**shown[fake_peer_id(n)], "offences": 0, "cooling_off": False}
               for n in "abc")


def test_in_a_swarm_that_prices_identities_a_commitment_without_the_work_is_refused(tmp_path: Path) -> None:
    config = CONFIG.replace(vote=dataclasses.replace(CONFIG.vote, identity_bits=10))
    peers, clock, table = memory_swarm(tmp_path, config, ["a", "b", "c", "free"], faults={"free": "free-identity"})
    free = fake_peer_id("free")
    for r in range(2):
        lockstep_round(peers, clock, r, before=20, after=5)
        assert free in table.rows[("commits", r)]  # it did commit
        assert len({p.state.version for p in peers}) == 1
        entry = peers[0].ctx.store.commit(peers[0].state.version.hex())
        refused = next(c for c in entry.contributions if c.peer_id == free)
        assert not refused.accepted and refused.reason == "no proof of work on its identity (10 bits)"
        assert {c.peer_id for c in entry.accepted} == {fake_peer_id(n) for n in "abc"}
        # Refused before the checker draw: nobody downloaded its update.
        assert not any(who == free for p in peers[:3] for who, _, _ in p.ctx.exchange.fetched)  # type: ignore[attr-defined]


def test_payloads_kept_for_fewer_rounds_than_missed_cannot_be_replayed(tmp_path: Path) -> None:
    """`join --keep-payloads ROUNDS` bounds how far back others can replay from this peer."""
    peers, clock, _ = memory_swarm(tmp_path, CONFIG, ["a", "b", "late"], keep_payload_rounds=1)
    *early, late = peers
    for r in range(3):
        lockstep_round(early, clock, r, before=10, after=0)
    stuck = late.sync.catch_up(3, late.state)
    assert stuck.version == late.state.version  # round 0's payloads are gone everywhere
    assert any("cannot re-derive" in line for line in late.lines)


def test_an_update_is_served_only_from_its_rounds_commit_deadline(tmp_path: Path) -> None:
    """Commit, then reveal: during the commit phase nobody can fetch an honest update to
    commit a perturbed copy of it in the same round."""
    peers, clock, _ = memory_swarm(tmp_path, CONFIG, ["a", "copier"])
    author, copier = peers
    author.tracker.train(5)
    phases = author.ctx.phases
    clock.sleep_until(phases.deadline(0, Phase.TRAIN))
    update = author.contributor.contribute(author.tracker.snapshot(), author.state.version)
    author.engine.commit(0, update)
    with pytest.raises(PeerBusy, match="not serving update"):
        copier.ctx.exchange.fetch(author.ctx.peer_id, "update", update.committed_digest.hex(),
                                  max_size=1 << 24, timeout=1.0)
    clock.sleep_until(phases.deadline(0, Phase.COMMIT))
    assert copier.ctx.exchange.fetch(author.ctx.peer_id, "update", update.committed_digest.hex(),
                                     max_size=1 << 24, timeout=1.0) == update.payload


def test_a_late_joiner_replays_from_a_pinned_version_when_older_history_is_gone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`join --trust-version VERSION:CHECKSUM`: when round 0 can no longer be replayed, the
    joiner downloads the pinned version (checked against its checksum) and replays the
    rest, instead of taking the newest state on the word of its holders."""
    from swarmtrain.peer.round.pin import PinnedVersion

    peers, clock, _ = memory_swarm(tmp_path, CONFIG, ["a", "b", "late"])
    *early, late = peers
    for r in range(3):
        lockstep_round(early, clock, r, before=10, after=0)
    v3 = early[0].state
    store = early[0].ctx.store
    v1 = next(c for c in store.lineage(v3.version.hex()) if c.round == 0)  # produced in round 0
    # What a user copies from a peer it trusts.
    capsys.readouterr()
    assert main(["log", "--pin", "--data-dir", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.strip() == f"{v3.version.hex()}:{v3.checksum.hex()}"
    # Round 0's payloads are gone everywhere: nothing replays from the genesis.
    blobs = late.ctx.exchange.blobs  # type: ignore[attr-defined]
    for key in [k for k in blobs if k[1] == "update" and k[2] in {c.digest for c in v1.accepted}]:
        del blobs[key]
    stuck = late.sync.catch_up(3, late.state)
    assert stuck.version == late.state.version
    # A pin nobody published (a wrong checksum) is refused by name, and nothing is downloaded.
    late.sync.pinned = PinnedVersion(v1.version_id, "00" * 32)
    stuck = late.sync.catch_up(3, late.state)
    assert stuck.version == late.state.version
    assert any(f"nor from the pinned version {v1.version_id[:12]}: no result published" in line
               for line in late.lines), late.lines
    late.sync = type(late.sync)(late.ctx, pinned=PinnedVersion(v1.version_id, v1.state_checksum))
    caught = late.sync.catch_up(3, late.state)
    assert (caught.version, caught.checksum, caught.round) == (v3.version, v3.checksum, 3)
    assert any(f"downloading the pinned version {v1.version_id[:12]} (round 0" in line for line in late.lines)
    assert any("replaying rounds 1-2" in line for line in late.lines)
    assert late.ctx.store.commit(v3.version.hex()).state_checksum == v3.checksum.hex()


def test_a_pinned_version_is_parsed_with_its_checksum_or_refused_with_the_fix() -> None:
    from swarmtrain.peer.round.pin import PinnedVersion

    pin = PinnedVersion.parse(f"{'ab' * 32}:{'cd' * 32}\n")
    assert (pin.version, pin.checksum, str(pin)) == ("ab" * 32, "cd" * 32, f"{'ab' * 32}:{'cd' * 32}")
    for bad in ("ab" * 32, f"{'ab' * 31}:{'cd' * 32}", f"{'AB' * 32}:{'cd' * 32}", f"{'ab' * 32}:"):
        with pytest.raises(ValueError, match="swarmtrain log --pin"):
            PinnedVersion.parse(bad)


def test_peers_that_froze_different_commit_sets_decide_over_the_one_most_voters_judged(tmp_path: Path) -> None:
    """A commitment landing right at the deadline is in some peers' frozen sets and not in
    others'. Ballots name the set their voter judged, and every peer decides over the
    set most voters with standing named, so all merge one version the first time (before,
    the two sides merged different versions and one had to recompute the other's)."""
    peers, clock, table = memory_swarm(tmp_path, CONFIG, ["a", "b", "c", "e", "d"])
    lockstep_round(peers, clock, 0, before=10, after=0)
    d = fake_peer_id("d")

    def d_lands_after_three_peers_froze() -> None:
        row = table.rows[("commits", 1)]
        landed = row.pop(d)
        for p in peers[1:4]:
            p.engine.frozen_commits(1)
        row[d] = landed

    lockstep_round(peers, clock, 1, before=10, after=0, before_checks=d_lands_after_three_peers_froze)
    named = {rec.commit_set for rec in table.rows[("votes", 1)].values()}
    assert len(named) == 2  # the two sides did judge different sets
    assert len({(p.state.version, p.state.checksum) for p in peers}) == 1
    assert not any("not the majority's" in line for p in peers for line in p.lines)
    entry = peers[0].ctx.store.commit(peers[0].state.version.hex())
    assert d not in {c.peer_id for c in entry.contributions}  # decided over the set without it
    assert len(entry.accepted) == 4
