"""Swarm names and the DHT keys of a swarm's records.

Every key starts with ``swarmtrain/<swarm>/`` (one namespace per swarm, so
swarms sharing a DHT never read each other's records). hivemind hashes a
key before any validator sees it, so this module also gives the hashed id of each key
(:func:`key_id`): validators recognise our records by those ids, never by the text.
"""

from __future__ import annotations

import enum
import re

from hivemind.dht.routing import DHTID

__all__ = [
    "KEY_PREFIX",
    "MAX_ROUND",
    "SWARM_NAME_RULE",
    "ROUND_FAMILIES",
    "STATIC_FAMILIES",
    "InvalidRoundError",
    "InvalidSwarmNameError",
    "KeyFamily",
    "commits_key",
    "genesis_key",
    "key_id",
    "peers_key",
    "result_key",
    "round_key",
    "static_key",
    "validate_round",
    "validate_swarm_name",
    "votes_key",
]

KEY_PREFIX = "swarmtrain"

# Lowercase so that "Demo" and "demo" cannot be two swarms that look alike in a terminal;
# no "/" so a swarm name can never reach into another swarm's key space.
SWARM_NAME_RULE = "1-63 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit"
_SWARM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")

# Rounds are timed from the genesis: 2**40 rounds of one second is ~35,000 years, so a
# larger number is a bug or an attack, not a real round.
MAX_ROUND = 2**40


class InvalidSwarmNameError(ValueError):
    """A swarm name breaks :data:`SWARM_NAME_RULE`."""


class InvalidRoundError(ValueError):
    """A round number is not an integer in ``[0, MAX_ROUND]``."""


class KeyFamily(enum.Enum):
    """The five kinds of swarm records; the value is the key's suffix (``{r}`` = round)."""

    GENESIS = "genesis"
    PEERS = "peers"
    COMMITS = "round/{r}/commits"
    VOTES = "round/{r}/votes"
    RESULT = "round/{r}/result"

    @property
    def per_round(self) -> bool:
        """Whether the family has one key per round."""
        return "{r}" in self.value


ROUND_FAMILIES: tuple[KeyFamily, ...] = tuple(f for f in KeyFamily if f.per_round)
STATIC_FAMILIES: tuple[KeyFamily, ...] = tuple(f for f in KeyFamily if not f.per_round)


def validate_swarm_name(swarm: str) -> str:
    """Return ``swarm`` unchanged if it is a valid swarm name, else raise InvalidSwarmNameError."""
    if not isinstance(swarm, str) or _SWARM_NAME_RE.fullmatch(swarm) is None:
        raise InvalidSwarmNameError(
            f"invalid swarm name {swarm!r}: use {SWARM_NAME_RULE} (for example 'demo' or 'lm-2024.1')"
        )
    return swarm


def validate_round(round_: int) -> int:
    """Return ``round_`` unchanged if it is a round number, else raise InvalidRoundError."""
    # bool is an int subclass; True as a round number is always a caller's mistake.
    if isinstance(round_, bool) or not isinstance(round_, int) or not 0 <= round_ <= MAX_ROUND:
        raise InvalidRoundError(f"round must be an integer in [0, {MAX_ROUND}], got {round_!r}")
    return round_


def _key(swarm: str, suffix: str) -> str:
    return f"{KEY_PREFIX}/{validate_swarm_name(swarm)}/{suffix}"


def genesis_key(swarm: str) -> str:
    """``swarmtrain/<swarm>/genesis``."""
    return _key(swarm, KeyFamily.GENESIS.value)


def peers_key(swarm: str) -> str:
    """``swarmtrain/<swarm>/peers`` (heartbeats)."""
    return _key(swarm, KeyFamily.PEERS.value)


def commits_key(swarm: str, round_: int) -> str:
    """``swarmtrain/<swarm>/round/<r>/commits``."""
    return round_key(swarm, KeyFamily.COMMITS, round_)


def votes_key(swarm: str, round_: int) -> str:
    """``swarmtrain/<swarm>/round/<r>/votes``."""
    return round_key(swarm, KeyFamily.VOTES, round_)


def result_key(swarm: str, round_: int) -> str:
    """``swarmtrain/<swarm>/round/<r>/result``."""
    return round_key(swarm, KeyFamily.RESULT, round_)


def round_key(swarm: str, family: KeyFamily, round_: int) -> str:
    """The key of a per-round ``family`` for round ``round_``."""
    if not family.per_round:
        raise ValueError(f"{family.name} has no per-round key; use genesis_key() or peers_key()")
    return _key(swarm, family.value.format(r=validate_round(round_)))


def static_key(swarm: str, family: KeyFamily) -> str:
    """The key of a family that has one key per swarm (genesis, peers)."""
    if family.per_round:
        raise ValueError(f"{family.name} has one key per round; use round_key()")
    return _key(swarm, family.value)


def key_id(key: str) -> bytes:
    """The hashed id hivemind gives ``key``: what a record validator sees as ``record.key``."""
    return DHTID.generate(source=key).to_bytes()
