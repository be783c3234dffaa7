"""Pure renderers on a fixed-width console: simulate rows, swarm status, history."""

from __future__ import annotations

import dataclasses

from rich.console import Console

from swarmtrain.peer.round.simulate import PeerOutcome, RoundReport
from swarmtrain.peer.app.status import PeerStatus, SwarmSnapshot, render
from swarmtrain.peer.store.versions import Contribution, VersionCommit
from swarmtrain.peer.app.terminal import render_history, render_round, render_summary


def _text(renderable: object, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def _peer(pid: str, version: str) -> PeerStatus:
    return PeerStatus(peer_id=pid, role="training", round=3, version=version, state_checksum="c" * 64,
                      last_val_loss=2.5, bytes_sent=2048, bytes_received=10, updates_accepted=3,
                      updates_rejected=1, seconds_since_heartbeat=1.0, last_round_s=17.0,
                      utilisation=0.934, samples_per_s=411.6)


def test_status_marks_peers_off_the_majority_version() -> None:
    snap = SwarmSnapshot(swarm="s", task="stdlib-lm", round=3, phase="vote", version="a" * 64,
                         peers=(_peer("QmAAAAAAAAAAAAAA", "a" * 64), _peer("QmBBBBBBBBBBBBBB", "b" * 64)),
                         taken_at=0.0)
    text = _text(render(snap))
    assert "round 3 (vote)" in text and "2 peer(s)" in text
    assert "version aaaaaaaaaaaa" in text  # the title names the majority version
    assert "bbbbbbbb ≠" in text and "aaaaaaaa ≠" not in text
    assert "2.0K" in text and "2.500" in text and "3/1" in text
    assert "93%" in text and " 412 " in text  # utilisation and samples/s


def test_status_rows_fit_an_80_column_terminal_unwrapped() -> None:
    big = dataclasses.replace(_peer("QmWEcoHcsQwbE63aTEx4Pwz6e7g2uackPKXhRfgFWktpW3", "a" * 64),
                              role="training", round=12345, bytes_sent=1023 * 2**30, bytes_received=999 * 2**20,
                              updates_accepted=1234, updates_rejected=567, last_val_loss=12.3456,
                              utilisation=1.0, samples_per_s=123456.7)
    snap = SwarmSnapshot(swarm="community-lm", task="stdlib-lm", round=12345, phase="train", version="a" * 64,
                         peers=(big, dataclasses.replace(big, peer_id="Qm" + "Z" * 44, version="b" * 64)),
                         taken_at=0.0)
    lines = _text(render(snap), width=80).splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if "QmWEcoHc…" in line]
    assert len(rows) == 1  # one line per peer: nothing wrapped
    for cell in ("training", "12345", "1023G", "999M", "12.346", "1234/567", "100%", "123457"):
        assert cell in rows[0], rows[0]


def test_status_title_counts_resyncs_only_when_there_are_some() -> None:
    calm = SwarmSnapshot(swarm="s", task="stdlib-lm", round=3, phase="vote", version="a" * 64,
                         peers=(_peer("QmAAAAAAAAAAAAAA", "a" * 64),), taken_at=0.0)
    assert "resync" not in _text(render(calm))
    shaky = dataclasses.replace(calm, peers=(
        dataclasses.replace(_peer("QmAAAAAAAAAAAAAA", "a" * 64), resyncs=2),
        dataclasses.replace(_peer("QmBBBBBBBBBBBBBB", "a" * 64), resyncs=1)))
    assert "3 resync(s)" in _text(render(shaky))


def test_status_without_genesis() -> None:
    snap = SwarmSnapshot(swarm="s", task=None, round=None, phase=None, version=None, peers=(), taken_at=0.0)
    assert "no genesis yet" in _text(render(snap))


def _report(accepted: bool) -> RoundReport:
    return RoundReport(round=2, version_id="f" * 64, state_checksum="e" * 64, validation_loss=3.25,
                       outcomes=(PeerOutcome("peer0", "abc", True, 2, 0, "ok", 100),
                                 PeerOutcome("peer1", "def", accepted, 0 if not accepted else 2,
                                             2 if not accepted else 0, "held-out loss rose by 0.1", 100)),
                       seconds=1.0, fp32_bytes=10000)


def test_round_line_shows_rejections_with_reason() -> None:
    text = _text(render_round(_report(False)))
    assert "validation loss 3.2500" in text and "100x" in text and "accepted 1/2" in text
    assert "rejected peer1 def: held-out loss rose by 0.1 (0 for, 2 against)" in text
    assert "rejected" not in _text(render_round(_report(True))).replace("accepted", "")


def test_summary_counts_per_peer() -> None:
    text = _text(render_summary([_report(False), _report(False)], fault_peer="peer1"))
    assert "peer1 (faulty)" in text
    row = next(line for line in text.splitlines() if "peer1" in line)
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[-2:] == ["0", "2"]


def test_history_lists_rejected_contributions() -> None:
    bad = Contribution(peer_id="QmEvil", digest="d" * 64, samples=8, accepted=False, votes_for=0,
                       votes_against=3, loss_delta=None, reason="digest mismatch")
    commits = [VersionCommit(version_id="1" * 64, parent_id=None, round=0, created=0.0, contributions=(),
                             validation_loss=None, state_checksum="0" * 64),
               VersionCommit(version_id="2" * 64, parent_id="1" * 64, round=0, created=1.0, contributions=(bad,),
                             validation_loss=4.5, state_checksum="0" * 64)]
    text = _text(render_history(commits), width=200)
    lines = text.splitlines()
    assert lines.index(next(l for l in lines if "222222222222" in l)) < \
        lines.index(next(l for l in lines if "genesis" in l))
    assert "QmEvil" in text and "digest mismatch" in text and "4.5000" in text
