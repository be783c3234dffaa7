"""``status --watch``: the swarm's position at fixed times, records to rounds, and the panels
rendered on a fixed-width console."""

from __future__ import annotations

import dataclasses
import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from swarmtrain.dht.schemas import LOSS_TREND_LEN, CommitRecord, PeerRecord, ResultRecord, ValidationError, VoteRecord
from swarmtrain.dht.testing import hex_digest, sample_commit, sample_genesis, sample_peer, sample_result, sample_votes
from swarmtrain.peer.app.panel import JoinOutput, PeerWatcher, render_peer
from swarmtrain.peer.app.status import (PeerStatus, Rejection, RoundStatus, SwarmSnapshot, collect, render_watch,
                                        round_status, sparkline, swarm_position, swarm_trend)
from swarmtrain.peer.config import RoundTiming, SwarmConfig

# A commit point every 10 s; round r's exchange: commit 2 s, vote 3 s, agree 4 s.
TIMING = RoundTiming(train_s=10.0, commit_s=2.0, vote_s=3.0, agree_s=4.0)
A, B, C = "Qm" + "A" * 44, "Qm" + "B" * 44, "Qm" + "C" * 44


def _text(renderable: object, width: int = 100) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(("offset", "held", "phase", "phase_round", "left"), [
    (-5.0, 0, "train", 0, 15.0),
    (9.99, 0, "train", 0, 0.01),
    (10.0, 0, "commit", 0, 2.0),      # round 0's commit point: round 1 trains, peers hold V(0)
    (14.99, 0, "vote", 0, 0.01),
    (15.0, 1, "agree", 0, 4.0),       # peers merged V(1): the swarm is at round 1, in round 0's agree
    (18.99, 1, "agree", 0, 0.01),
    (19.0, 1, "train", 1, 1.0),
    (40.0, 3, "commit", 3, 2.0),
])
def test_position_names_the_round_peers_hold_and_whose_phase_it_is(
        offset: float, held: int, phase: str, phase_round: int, left: float) -> None:
    position = swarm_position(1000.0, TIMING, 1000.0 + offset)
    assert (position.round, position.phase, position.phase_round) == (held, phase, phase_round)
    assert position.phase_ends_at - (1000.0 + offset) == pytest.approx(left)


class _Records:
    """Stands in for SwarmRecords: fixed records, and each read takes 0.2 s of a fake clock."""

    swarm = "itest"

    def __init__(self, clock: list[float], peers: dict[str, PeerRecord],
                 rounds: dict[int, tuple[dict[str, CommitRecord], dict[str, VoteRecord], dict[str, ResultRecord]]]):
        self.clock, self._peers, self._rounds = clock, peers, rounds
        self.reads: list[tuple[str, int]] = []
        self.genesis = sample_genesis(A, config=SwarmConfig(timing=TIMING).to_dict(), genesis_time=1000.0)

    def _tick(self) -> None:
        self.clock[0] += 0.2

    def read_genesis(self):  # type: ignore[no-untyped-def]
        self._tick()
        return self.genesis

    def peers(self) -> dict[str, PeerRecord]:
        self._tick()
        return self._peers

    def _round(self, r: int, i: int, what: str):  # type: ignore[no-untyped-def]
        self._tick()
        self.reads.append((what, r))
        return self._rounds.get(r, ({}, {}, {}))[i]

    def commits(self, r: int) -> dict[str, CommitRecord]:
        return self._round(r, 0, "commits")

    def votes(self, r: int) -> dict[str, VoteRecord]:
        return self._round(r, 1, "votes")

    def results(self, r: int) -> dict[str, ResultRecord]:
        return self._round(r, 2, "results")


def _round_records(r: int) -> tuple[dict[str, CommitRecord], dict[str, VoteRecord], dict[str, ResultRecord]]:
    commits = {p: sample_commit(p, digest=hex_digest(f"{r}-{p}")) for p in (A, B, C)}
    good = [hex_digest(f"{r}-{A}"), hex_digest(f"{r}-{B}")]
    bad = {hex_digest(f"{r}-{C}"): {"accept": False, "loss_delta": 0.5, "reason": "norm 78.6 above 4.0x"}}
    votes = {v: VoteRecord.model_validate({"voter": v, "votes": {
        **{d: {"accept": True, "loss_delta": -0.01} for d in good}, **bad}}) for v in (A, B)}
    results = {p: sample_result(p, version_id=hex_digest(f"v{r + 1}"), accepted=sorted(good)) for p in (A, B)}
    return commits, votes, results


def test_round_status_from_records() -> None:
    row = round_status(4, *_round_records(4))
    assert (row.round, row.committed, row.accepted, row.version) == (4, 3, 2, hex_digest("v5"))
    assert row.rejected == (Rejection(C, "norm 78.6 above 4.0x"),)
    # Before any result: committed, not agreed.
    pending = round_status(5, {A: sample_commit(A)}, {A: sample_votes(A)}, {})
    assert (pending.committed, pending.accepted, pending.rejected) == (1, None, ())
    # A rejection nobody gave a reason for still shows up.
    commits, _, results = _round_records(6)
    assert round_status(6, commits, {}, results).rejected == (Rejection(C, "not accepted by its checkers"),)


def test_collect_reads_the_clock_after_the_records_and_keeps_final_rounds() -> None:
    # Starts 0.1 s before round 2's vote deadline; the reads take it into round 2's agree phase.
    clock = [1000.0 + 34.9]
    records = _Records(clock, {A: sample_peer(A, round=3, loss_trend=[3.0, 2.5])},
                       {r: _round_records(r) for r in range(3)})
    known: dict[int, RoundStatus] = {}
    snap = collect(records, rounds=3, known=known, now=lambda: clock[0])  # type: ignore[arg-type]
    assert (snap.round, snap.phase, snap.phase_round) == (3, "agree", 2)  # as the peers say: round 3
    assert [r.round for r in snap.rounds] == [2, 1, 0]
    assert snap.peers[0].loss_trend == (3.0, 2.5) and snap.peers[0].software_version == "swarmtrain 0.1.0"
    assert sorted(known) == [0, 1]  # round 2 is still being agreed: read again next time
    records.reads.clear()
    clock[0] = 1000.0 + 39.5  # round 3 trains: round 2 is the latest with records
    snap = collect(records, rounds=3, known=known, now=lambda: clock[0])  # type: ignore[arg-type]
    assert [r.round for r in snap.rounds] == [2, 1, 0]
    assert {r for _, r in records.reads} == {2}


def _peer(pid: str, version: str, trend: tuple[float, ...], **kw: object) -> PeerStatus:
    base = PeerStatus(peer_id=pid, role="training", round=7, version=version, state_checksum="c" * 64,
                      last_val_loss=trend[-1] if trend else None, bytes_sent=4096, bytes_received=2048,
                      updates_accepted=6, updates_rejected=1, seconds_since_heartbeat=1.0, last_round_s=11.0,
                      utilisation=0.87, samples_per_s=123.4, software_version="swarmtrain 0.1.0", loss_trend=trend)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _snapshot() -> SwarmSnapshot:
    return SwarmSnapshot(
        swarm="lab", task="stdlib-lm", round=7, phase="agree", version="a" * 64, taken_at=1000.0,
        phase_round=6, phase_ends_at=1003.2,
        peers=(_peer(A, "a" * 64, (4.0, 3.5, 3.0, 2.5)), _peer(B, "a" * 64, (3.6, 3.1, 2.7)),
               _peer(C, "b" * 64, (9.0,), software_version="swarmtrain 0.0.9", utilisation=0.42,
                     samples_per_s=56.0)),
        rounds=(RoundStatus(7, 2, None, (), None),
                RoundStatus(6, 3, 2, (Rejection(C, "digest mismatch"),), "f" * 64),
                RoundStatus(5, 3, 3, (), "e" * 64)))


def test_watch_panels_on_a_fixed_width_console() -> None:
    text = _text(render_watch(_snapshot()))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "round 7 (round 6 agree, 3s left)" in text and "3 peer(s)" in text
    # Each peer: utilisation, samples/s, software version, its own loss trend.
    row_c = next(line for line in lines if C[:8] in line and "…" in line and "rejected" not in line)
    for cell in ("42%", " 56 ", "0.0.9", "6/1 ▁ "):
        assert cell in row_c, row_c
    row_a = next(line for line in lines if A[:8] in line and "rejected" not in line)
    assert "87%" in row_a and " 123 " in row_a and "0.1.0" in row_a and "█▆▃▁" in row_a
    # The swarm's trend: medians of the majority version's peers, aligned at the newest.
    assert "held-out loss" in text
    assert "4.000 █▆▃▁ 2.600  over the last 4 version(s), -1.400" in text
    # Recent rounds, newest first, rejections with their reason.
    assert "round 7: 2 update(s) committed, not agreed yet" in text
    assert "round 6: accepted 2/3, version ffffffffffff" in text
    assert f"rejected {C[:12]}…: digest mismatch" in text
    assert "round 5: accepted 3/3" in text
    assert lines.index(next(l for l in lines if "round 7:" in l)) < lines.index(next(l for l in lines if "round 5:" in l))


def test_watch_panels_before_any_loss_or_round() -> None:
    empty = SwarmSnapshot(swarm="s", task=None, round=None, phase=None, version=None, peers=(), taken_at=0.0)
    text = _text(render_watch(empty))
    assert "no genesis yet" in text and "no held-out loss yet" in text and "no round records yet" in text


def test_sparkline_and_trend() -> None:
    assert sparkline([]) == "" and sparkline([2.0, 2.0]) == "▁▁"
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert swarm_trend(_snapshot()) == [4.0, pytest.approx(3.55), 3.05, 2.6]


def _node(round_: int, loss: float | None, accepted: int, rejected: int) -> SimpleNamespace:
    stats = SimpleNamespace(utilisation=0.91, samples_per_second=321.5)
    return SimpleNamespace(
        state=SimpleNamespace(round=round_, version=bytes([round_]) * 32, validation_loss=loss),
        engine=SimpleNamespace(accepted=accepted, rejected=rejected),
        worker=SimpleNamespace(stats=lambda: stats),
        genesis=SimpleNamespace(genesis_time=1000.0), config=SwarmConfig(timing=TIMING),
        identity=SimpleNamespace(peer_id=A), options=SimpleNamespace(swarm="lab"))


def test_join_panel_shows_this_peer() -> None:
    node = _node(1, 3.5, 0, 0)
    watcher = PeerWatcher(node)  # type: ignore[arg-type]
    assert watcher.view(1003.0).last_update is None
    node.state, node.engine = _node(2, 3.1, 1, 0).state, _node(2, 3.1, 1, 0).engine
    view = watcher.view(1025.5)  # round 1's agree phase: this peer already holds V(2)
    assert (view.round, view.phase, view.phase_round, view.last_update) == (2, "agree", 1, "accepted")
    assert view.loss_trend == (3.5, 3.1)
    node.engine = _node(2, 3.1, 1, 1).engine
    assert watcher.view(1026.0).last_update == "rejected"
    text = _text(render_peer(watcher.view(1026.0)), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    for cell in (f"peer {A[:12]}… in swarm 'lab'", "round    2 (round 1 agree, 3s left)", "3.1000 █▁",
                 "busy", "91%", "samples/s  321.5", "1 accepted, 1 rejected", "last       rejected"):
        assert cell in text, text


def test_join_panel_stays_off_when_stdout_is_not_a_terminal() -> None:
    stream = io.StringIO()
    output = JoinOutput(stream)
    output.announce("genesis abc")
    with output.panel(_node(1, None, 0, 0)):  # type: ignore[arg-type]
        output.announce("round 0: version abc")
    assert stream.getvalue() == "genesis abc\nround 0: version abc\n"  # the plain lines, exactly


def test_heartbeat_loss_trend_is_optional_and_bounded() -> None:
    assert sample_peer(A).loss_trend is None  # a heartbeat without it (older peers) is valid
    full = sample_peer(A, loss_trend=[float(i) for i in range(LOSS_TREND_LEN)])
    assert len(full.packed()) < 1024
    with pytest.raises(ValidationError):
        sample_peer(A, loss_trend=[1.0] * (LOSS_TREND_LEN + 1))
    with pytest.raises(ValidationError):
        sample_peer(A, loss_trend=[float("nan")])
