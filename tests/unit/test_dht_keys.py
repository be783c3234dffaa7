"""Swarm names, key builders and hashed key ids (no network)."""

from __future__ import annotations

import pytest
from hivemind.dht.routing import DHTID

from swarmtrain.dht.keys import (
    MAX_ROUND,
    InvalidRoundError,
    InvalidSwarmNameError,
    KeyFamily,
    commits_key,
    genesis_key,
    key_id,
    peers_key,
    result_key,
    round_key,
    static_key,
    validate_round,
    validate_swarm_name,
    votes_key,
)


@pytest.mark.parametrize("name", ["demo", "a", "0", "lm-2024.1", "x_y", "a" * 63, "9lives"])
def test_valid_swarm_names_pass_unchanged(name: str) -> None:
    assert validate_swarm_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Demo", "a/b", "-lead", ".hidden", "_x", "a" * 64, "with space", "ünï", "a\n", None, 3, b"demo"],
)
def test_invalid_swarm_names_raise_with_the_rule(name: object) -> None:
    with pytest.raises(InvalidSwarmNameError, match="1-63 characters"):
        validate_swarm_name(name)  # type: ignore[arg-type]


def test_key_builders_follow_the_design_layout() -> None:
    assert genesis_key("demo") == "swarmtrain/demo/genesis"
    assert peers_key("demo") == "swarmtrain/demo/peers"
    assert commits_key("demo", 7) == "swarmtrain/demo/round/7/commits"
    assert votes_key("demo", 7) == "swarmtrain/demo/round/7/votes"
    assert result_key("demo", 0) == "swarmtrain/demo/round/0/result"


def test_key_builders_refuse_bad_swarm_names() -> None:
    with pytest.raises(InvalidSwarmNameError):
        commits_key("../other", 1)


@pytest.mark.parametrize("bad", [-1, MAX_ROUND + 1, True, 1.0, "3", None])
def test_bad_round_numbers_raise(bad: object) -> None:
    with pytest.raises(InvalidRoundError):
        validate_round(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRoundError):
        votes_key("demo", bad)  # type: ignore[arg-type]


def test_family_helpers_refuse_the_wrong_kind_of_family() -> None:
    assert [f for f in KeyFamily if f.per_round] == [KeyFamily.COMMITS, KeyFamily.VOTES, KeyFamily.RESULT]
    with pytest.raises(ValueError, match="per-round"):
        round_key("demo", KeyFamily.PEERS, 1)
    with pytest.raises(ValueError, match="one key per round"):
        static_key("demo", KeyFamily.VOTES)


def test_key_id_is_what_hivemind_hashes_and_separates_keys() -> None:
    key = commits_key("demo", 5)
    assert key_id(key) == DHTID.generate(source=key).to_bytes()
    assert len(key_id(key)) == 20
    ids = {key_id(commits_key("demo", r)) for r in range(50)} | {key_id(commits_key("demo2", 5))}
    assert len(ids) == 51
