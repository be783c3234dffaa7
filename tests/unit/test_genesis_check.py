"""What a peer checks of a genesis record before it builds anything the record asks for."""

from __future__ import annotations


import pytest
from memswarm import fake_peer_id

from swarmtrain.dht.testing import sample_genesis
from swarmtrain.peer.app.cli import build_parser
from swarmtrain.peer.config import ModelConfig, preset
from swarmtrain.peer.node import PROTOCOL_VERSION, JoinError, check_genesis

SMOKE = preset("smoke").replace(task="synthetic")


def _genesis(config_dict: dict, task: str | None = None):  # type: ignore[no-untyped-def, type-arg]
    return sample_genesis(fake_peer_id("creator"), protocol_version=PROTOCOL_VERSION,
                          task=task or config_dict["task"], config=config_dict)


def test_a_genesis_with_built_in_settings_is_adopted() -> None:
    assert check_genesis(_genesis(SMOKE.to_dict()), insisted=None) == SMOKE


def test_a_code_task_from_a_record_never_runs_unless_this_peer_named_it() -> None:
    """It used to be imported and called before any check: code execution by DHT record."""
    code = SMOKE.replace(task="os:system").to_dict()
    with pytest.raises(JoinError, match="name it yourself: --task os:system"):
        check_genesis(_genesis(code), insisted=None)
    mine = SMOKE.replace(task="os:system")
    assert check_genesis(_genesis(code), insisted=mine) == mine


def test_the_record_task_and_the_settings_task_must_agree() -> None:
    with pytest.raises(JoinError, match="malformed genesis"):
        check_genesis(_genesis(SMOKE.to_dict(), task="stdlib-lm"), insisted=None)


def test_a_genesis_asking_for_an_absurd_model_is_refused_before_anything_is_allocated() -> None:
    """A record asking for about 10^17 parameters used to validate."""
    huge = SMOKE.to_dict()
    huge["model"] = {**huge["model"], "d_model": 65536, "layers": 1024, "heads": 4}
    with pytest.raises(JoinError, match="parameters"):
        check_genesis(_genesis(huge), insisted=None)
    assert ModelConfig().approx_params() < 10**6


def test_join_takes_a_genesis_digest_and_refuses_a_malformed_one(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    digest = "ab" * 32
    assert parser.parse_args(["join", "--genesis", digest]).genesis == digest
    with pytest.raises(SystemExit):
        parser.parse_args(["join", "--genesis", "xyz"])
    assert "64 lowercase hex" in capsys.readouterr().err


def test_a_resumed_peer_says_why_rounds_were_skipped() -> None:
    """After `down`/`up` peers resumed at round 8 from round 4's version and nothing said why."""
    from swarmtrain.peer.node import skipped_rounds
    assert skipped_rounds(4, 4) is None and skipped_rounds(4, 3) is None
    assert "rounds 4-7 passed" in (skipped_rounds(4, 8) or "")
    assert "round 4 passed" in (skipped_rounds(4, 5) or "")
