"""A checker rejects an update pointing against its own, whatever the loss vote says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from memswarm import fake_peer_id, memory_swarm
from test_round_engine import CONFIG

from swarmtrain.peer.round.check import Submission
from swarmtrain.peer.round.direction import AGAINST_OWN_COSINE, against_own
from swarmtrain.peer.round.vote import Verdict
from swarmtrain.peer.training.contribute import LocalUpdate


def test_only_updates_opposed_to_the_checkers_own_are_named() -> None:
    own = {"w": torch.tensor([1.0, 2.0, 0.0]), "b": torch.tensor([0.5])}
    updates = {
        b"\x01" * 32: {"w": torch.tensor([-1.0, -2.0, 0.0]), "b": torch.tensor([-0.5])},  # flipped
        b"\x02" * 32: {"w": torch.tensor([0.9, 2.2, 0.3]), "b": torch.tensor([0.4])},     # aligned
        b"\x03" * 32: {"w": torch.tensor([2.0, -1.0, 0.0]), "b": torch.tensor([0.0])},    # orthogonal
    }
    found = against_own(updates, own)
    assert list(found) == [b"\x01" * 32] and "cosine -1.00" in found[b"\x01" * 32]
    assert AGAINST_OWN_COSINE < 0  # honest updates merely less aligned are not rejected


def test_a_flipped_update_the_loss_vote_let_through_is_rejected_by_its_direction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What captured a real-peer swarm (`benchmarks/attacks_real.py`, 4 colluders): two
    honest checkers' loss votes accepted sign-flipped updates (cosine -0.31 to -0.43 with
    their own, +0.40 to +0.44 between honest ones), the colluders gained standing and then
    rejected every honest update. Here the loss vote is made to accept everything, as it
    did there; the direction check still rejects the flipped update, and only that one."""
    from swarmtrain.peer.round import check

    peers, _, _ = memory_swarm(tmp_path, CONFIG, ["a", "b", "flip"], faults={"flip": "sign-flip"})
    for p in peers:
        p.tracker.train(30)
    checker, state = peers[0], peers[0].state
    updates = {p.name: p.contributor.contribute(p.tracker.snapshot(), state.version) for p in peers}
    subs = [Submission(fake_peer_id(n), updates[n].committed_digest, updates[n].base_version,
                       updates[n].samples, updates[n].payload) for n in ("b", "flip")]
    monkeypatch.setattr(check, "judge", lambda *a, **k: Verdict(True, "ok"))

    def judged(own: LocalUpdate | None) -> dict[str, Verdict]:
        got = checker.ctx.checker.check_round(state.params, state.version, subs, seen=set(), own=own)
        return {n: got[updates[n].committed_digest] for n in ("b", "flip")}

    assert all(v.accept for v in judged(None).values())  # the fooled loss vote alone
    # Its own update on another version is no reference for this one's direction.
    stale = dataclasses.replace(updates["a"], base_version=b"\x00" * 32)
    assert all(v.accept for v in judged(stale).values())
    verdicts = judged(updates["a"])
    assert not verdicts["flip"].accept, verdicts["flip"]
    assert verdicts["flip"].reason.startswith("points against this checker's update (cosine -")
    assert verdicts["b"].accept
