"""Whole swarms of real peer processes on 127.0.0.1 (smoke preset, real p2pd daemons).

Each test starts `swarmtrain join` processes (own process group each) and ends them all
by their ids in a finally block, whatever happens.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from swarmkit import SMOKE, Swarm, by_round, heldout_loss, history

pytestmark = [pytest.mark.integration]


def _peer_id(log: str) -> str:
    line = next(line for line in log.splitlines() if line.startswith("peer "))
    return line.split()[1]


@pytest.mark.timeout(240)
def test_plain_hivemind_bootstrap_honest_peers_agree_and_faults_are_rejected(tmp_path: Path) -> None:
    """3 honest peers + `--fault overflow` (finite values near 1e30: before, one such update
    once accepted crashed every honest peer) + `--fault bad-checksum` + `--fault
    late-commit`, bootstrapped by a stock hivemind-dht node: the honest peers end on one
    version and checksum, loss falls, every honest peer's history records the faulty
    updates as rejected, and the late commitments are not in any round at all."""
    swarm = Swarm(tmp_path, "itest-a")
    try:
        bootstrap = swarm.start_plain_hivemind()
        common = [*SMOKE, "--rounds", "3", "--initial-peers", bootstrap]
        swarm.start("honest0", *common, "--start-delay", "30")
        swarm.wait_for_line("honest0", "join with:", timeout=60)
        for label in ("honest1", "honest2"):
            swarm.start(label, *common)
        swarm.start("overflow", *common, "--fault", "overflow")
        swarm.start("badsum", *common, "--fault", "bad-checksum")
        swarm.start("late", *common, "--fault", "late-commit")
        # status --json while the swarm runs: one snapshot from the records.
        swarm.wait_for_line("honest1", "round 0:", timeout=90)
        snapshot = subprocess.run(
            [sys.executable, "-m", "swarmtrain.peer.app.cli", "status", "--swarm", "itest-a", "--json",
             "--initial-peers", bootstrap], capture_output=True, text=True, timeout=60)
        assert snapshot.returncode == 0, snapshot.stderr
        status = json.loads(snapshot.stdout)
        assert status["swarm"] == "itest-a" and status["round"] is not None
        assert len(status["peers"]) >= 4
        played = [p for p in status["peers"] if p["round"] >= 1]
        assert all(p["last_round_s"] > 0 for p in played)
        # Everyone serves something, but the late committer: nobody fetches what it sent.
        assert sum(p["bytes_sent"] > 0 for p in played) >= len(played) - 1, played
        assert all(isinstance(p["resyncs"], int) and p["resyncs"] >= 0 for p in status["peers"])
        # Heartbeats say how busy each peer keeps its hardware (inner steps over wall time).
        training = [p for p in status["peers"] if p["samples_per_s"]]
        assert training and all(0 < p["utilisation"] <= 1 for p in training), status["peers"]
        swarm.wait("honest0", "honest1", "honest2", "overflow", "badsum", "late", timeout=150)
    finally:
        swarm.stop_all()

    honest = [tmp_path / name for name in ("honest0", "honest1", "honest2")]
    faulty_ids = {_peer_id(swarm.peers[n].log_text()) for n in ("overflow", "badsum")}
    late_id = _peer_id(swarm.peers["late"].log_text())
    finals = [history(d)[-1] for d in honest]
    assert len({(c.version_id, c.state_checksum) for c in finals}) == 1, finals
    for data_dir in honest:
        rounds = by_round(data_dir)
        assert sorted(rounds) == [0, 1, 2]
        for commit in rounds.values():
            faulty = [c for c in commit.contributions if c.peer_id in faulty_ids]
            assert faulty and not any(c.accepted for c in faulty), commit
            assert late_id not in {c.peer_id for c in commit.contributions}, commit
            assert len(commit.accepted) == 3
        reasons = {c.reason for commit in rounds.values() for c in commit.contributions if c.peer_id in faulty_ids}
        assert any("digest" in r for r in reasons) and any("norm" in r for r in reasons), reasons
    genesis = history(honest[0])[0].version_id
    assert heldout_loss(honest[0], finals[0].version_id) < heldout_loss(honest[0], genesis) - 0.1


@pytest.mark.timeout(300)
def test_late_joiner_and_killed_peer_catch_up_and_agree(tmp_path: Path) -> None:
    """A peer joining after round 1, and a peer SIGKILLed and restarted on its data dir,
    both end on the same version and checksum as the peers that never left. The killed
    peer trains with `--inner-optim wide-adamw` (an inner optimizer is each peer's own
    choice), so its state is restored on restart over real peers too."""
    swarm = Swarm(tmp_path, "itest-b")
    try:
        # a and b stay 7 rounds: the joiners below catch up and play a round while they are there.
        first = swarm.start("a", *SMOKE, "--rounds", "7", "--start-delay", "30",
                            "--address-file", str(tmp_path / "a.addr"))
        address = first.address()
        # --address-file: what it printed, one per line (loopback only: it listens on 127.0.0.1).
        assert address in (tmp_path / "a.addr").read_text().splitlines()
        assert all(a.startswith("/ip4/127.") for a in (tmp_path / "a.addr").read_text().split())
        swarm.start("b", *SMOKE, "--rounds", "7", "--initial-peers", address)
        victim = swarm.start("c", *SMOKE, "--rounds", "5", "--initial-peers", address, "--inner-optim", "wide-adamw")
        swarm.wait_for_line("a", "round 1:", timeout=120)
        # Kill c without warning (its DHT child and p2pd go with its process group) ...
        victim.stop(sig=signal.SIGKILL)
        swarm.start("d", *SMOKE, "--rounds", "1", "--initial-peers", address)
        # ... and restart it on the same data dir: same identity, resumes from its versions.
        swarm.start("c2", *SMOKE, "--rounds", "1", "--initial-peers", address, "--inner-optim", "wide-adamw",
                    data_dir="c")
        swarm.wait("a", "b", "c2", "d", timeout=200)
    finally:
        swarm.stop_all()

    a, b, c, d = (by_round(tmp_path / n) for n in ("a", "b", "c", "d"))
    assert sorted(a) == list(range(7)) and sorted(b) == sorted(a)
    for rounds in (c, d):
        last = max(rounds)
        assert last >= 2 and last in a, rounds.keys()
        assert (rounds[last].version_id, rounds[last].state_checksum) == \
            (a[last].version_id, a[last].state_checksum)
    assert _peer_id(swarm.peers["c"].log_text()) == _peer_id(swarm.peers["c2"].log_text())
    # Its wide-adamw updates pass the others' checks like AdamW ones.
    c_id = _peer_id(swarm.peers["c"].log_text())
    assert any(x.peer_id == c_id and x.accepted for commit in a.values() for x in commit.contributions)
    assert "resuming from version" in swarm.peers["c2"].log_text()
    # Neither took a state on anyone's word: both re-derived the rounds they missed.
    for name in ("d", "c2"):
        log = swarm.peers[name].log_text()
        assert "ON TRUST" not in log and "synced version" not in log, log
    assert "caught up: replayed" in swarm.peers["d"].log_text()
    assert "starting with an empty" not in swarm.peers["c2"].log_text()  # residual and AdamW restored
    for kept in ("feedback.safetensors", "inner-optimizer.safetensors"):
        assert (tmp_path / "c" / kept).stat().st_size > 0


@pytest.mark.timeout(120)
def test_joiner_with_other_settings_is_refused(tmp_path: Path) -> None:
    """A peer insisting on settings that differ from the genesis exits 1 with the differences."""
    swarm = Swarm(tmp_path, "itest-c")
    try:
        first = swarm.start("a", *SMOKE, "--start-delay", "60")
        address = first.address()
        other = swarm.start("b", "--preset", "demo", "--initial-peers", address)
        other.process.wait(timeout=90)
        log = other.log_text()
        assert other.process.returncode == 1, log
        assert "your settings differ" in log and "train.batch_size: yours 16, swarm 8" in log
        assert "Traceback" not in log
    finally:
        swarm.stop_all()


@pytest.mark.timeout(300)
def test_a_swarm_whose_peers_all_stopped_resumes_from_their_versions(tmp_path: Path) -> None:
    """Every peer leaves, so the genesis leaves the DHT with them; restarted on their data
    dirs, the first one back restores the pinned genesis and both go on from the version
    they ended on (not from a new genesis)."""
    swarm = Swarm(tmp_path, "itest-d")
    try:
        first = swarm.start("a", *SMOKE, "--rounds", "2", "--start-delay", "30")
        swarm.start("b", *SMOKE, "--rounds", "2", "--initial-peers", first.address())
        swarm.wait("a", "b", timeout=150)
        before = {n: history(tmp_path / n)[-1] for n in ("a", "b")}
        assert len({(c.version_id, c.state_checksum) for c in before.values()}) == 1, before
        # a2 stays for 3 rounds, so b2 (up some seconds later) plays one of them with it.
        again = swarm.start("a2", *SMOKE, "--rounds", "3", data_dir="a")
        swarm.start("b2", *SMOKE, "--rounds", "1", "--initial-peers", again.address(), data_dir="b")
        swarm.wait("a2", "b2", timeout=150)
    finally:
        swarm.stop_all()
    assert "restored the one this data dir pins" in swarm.peers["a2"].log_text()
    resumed = [c for c in history(tmp_path / "a") if c.round > before["a"].round]
    # The first merge after the restart is on top of where the swarm stopped.
    assert resumed and resumed[0].parent_id == before["a"].version_id, resumed
    b_last = history(tmp_path / "b")[-1]
    assert b_last.round > before["b"].round
    assert (b_last.version_id, b_last.state_checksum) == \
        (by_round(tmp_path / "a")[b_last.round].version_id, by_round(tmp_path / "a")[b_last.round].state_checksum)


@pytest.mark.timeout(200)
def test_a_swarm_that_prices_identities_refuses_a_free_identity_and_a_copycat(tmp_path: Path) -> None:
    """A swarm started with --identity-bits 16: the two peers that prove the work on their
    ids are merged every round; a peer that commits without it (`--fault free-identity`)
    is refused before any check; a peer that resends last round's update of another with
    1 % noise (`--fault copycat`) is rejected as a near-copy; the honest two agree.
    (Two attacks in one swarm: each real swarm costs CI a minute.)"""
    swarm = Swarm(tmp_path, "itest-work")
    priced = [*SMOKE, "--identity-bits", "16", "--rounds", "2"]
    try:
        address = swarm.start("a", *priced, "--start-delay", "25").address()
        swarm.start("b", *priced, "--initial-peers", address)
        swarm.start("free", *priced, "--initial-peers", address, "--fault", "free-identity")
        swarm.start("copy", *priced, "--initial-peers", address, "--fault", "copycat")
        swarm.wait("a", "b", "free", "copy", timeout=170)
    finally:
        swarm.stop_all()

    free_id = _peer_id(swarm.peers["free"].log_text())
    copy_id = _peer_id(swarm.peers["copy"].log_text())
    for name in ("a", "b", "copy"):
        assert "proof of work on this identity (16 bits)" in swarm.peers[name].log_text()
    assert "proof of work on this identity" not in swarm.peers["free"].log_text()
    a, b = by_round(tmp_path / "a"), by_round(tmp_path / "b")
    assert sorted(a) == sorted(b) == [0, 1]
    for r, commit in a.items():
        assert (commit.version_id, commit.state_checksum) == (b[r].version_id, b[r].state_checksum)
        refused = [c for c in commit.contributions if c.peer_id == free_id]
        assert len(refused) == 1 and refused[0].reason == "no proof of work on its identity (16 bits)", commit
        assert free_id not in {c.peer_id for c in commit.accepted}
    # Round 0 has nothing older to copy (its update there is honest); in round 1 it
    # resends one of round 0's merged updates and is rejected for it.
    copied = next(c for c in a[1].contributions if c.peer_id == copy_id)
    assert not copied.accepted and "near-copy of update" in copied.reason, copied
    assert {c.peer_id for c in a[1].accepted} == {_peer_id(swarm.peers[n].log_text()) for n in ("a", "b")}
