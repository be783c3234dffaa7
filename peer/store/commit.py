"""A model version as a commit: parent, round, contributions and their scores.

These are plain frozen dataclasses with ``to_dict``/``from_dict`` over msgpack- and
JSON-friendly values (str, int, float, bool, None, list, dict), so the same record can be
written to disk, printed by ``swarmtrain log --json`` and sent to another peer.

``from_dict`` is strict about types (a record from disk or from the network may be
damaged or hostile) but ignores unknown keys, so a newer peer may add fields without
breaking older readers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CommitFormatError

_HEX = re.compile(r"[0-9a-f]+")
# Ids become file names, so they are bounded and restricted to lowercase hex: a record
# from a hostile peer cannot name a path outside the store.
MAX_HEX_CHARS = 128


def check_hex(value: object, field: str) -> str:
    """Return ``value`` if it is a lowercase hex string of sane length, else raise."""
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) > MAX_HEX_CHARS:
        raise CommitFormatError(
            f"{field} must be a lowercase hex string of 1..{MAX_HEX_CHARS} characters, "
            f"got {value!r:.80}"
        )
    return value


def _check_int(value: object, field: str) -> int:
    # bool is an int subclass; a True where a count belongs is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CommitFormatError(f"{field} must be an int >= 0, got {value!r:.80}")
    return value


def _check_float(value: object, field: str, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        kind = "a float or None" if optional else "a float"
        raise CommitFormatError(f"{field} must be {kind}, got {value!r:.80}")
    # NaN/inf are kept: a NaN loss delta is exactly what a NaN-fault peer produces and
    # the history should show it, not hide it.
    return float(value)


def _check_str(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise CommitFormatError(f"{field} must be a non-empty string, got {value!r:.80}")
    return value


def _require(data: object, keys: tuple[str, ...], what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise CommitFormatError(f"{what} must be a mapping, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise CommitFormatError(f"{what} is missing field(s) {', '.join(missing)}")
    return data


@dataclass(frozen=True)
class Contribution:
    """One peer's update in a round and what the swarm decided about it."""

    peer_id: str
    digest: str
    samples: int
    accepted: bool
    votes_for: int
    votes_against: int
    loss_delta: float | None
    reason: str  # "accepted", "majority rejected", "digest mismatch", "not downloaded", ...

    def __post_init__(self) -> None:
        _check_str(self.peer_id, "contribution.peer_id")
        check_hex(self.digest, "contribution.digest")
        _check_int(self.samples, "contribution.samples")
        if not isinstance(self.accepted, bool):
            raise CommitFormatError(
                f"contribution.accepted must be a bool, got {self.accepted!r:.80}"
            )
        _check_int(self.votes_for, "contribution.votes_for")
        _check_int(self.votes_against, "contribution.votes_against")
        # Normalise an int loss delta to float so equal records compare equal after a
        # JSON round trip.
        delta = _check_float(self.loss_delta, "contribution.loss_delta", optional=True)
        object.__setattr__(self, "loss_delta", delta)
        _check_str(self.reason, "contribution.reason")

    _FIELDS = ("peer_id", "digest", "samples", "accepted", "votes_for", "votes_against",
               "loss_delta", "reason")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of msgpack/JSON-friendly values."""
        return {name: getattr(self, name) for name in self._FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contribution:
        """Build from :meth:`to_dict` output; raises :class:`CommitFormatError` if malformed."""
        d = _require(data, cls._FIELDS, "contribution")
        return cls(**{name: d[name] for name in cls._FIELDS})


@dataclass(frozen=True)
class VersionCommit:
    """A merged model version: where it came from and which updates went into it."""

    version_id: str
    parent_id: str | None  # None only for the genesis version
    round: int
    created: float  # unix time the version was merged
    contributions: tuple[Contribution, ...]
    validation_loss: float | None
    state_checksum: str

    def __post_init__(self) -> None:
        check_hex(self.version_id, "commit.version_id")
        if self.parent_id is not None:
            check_hex(self.parent_id, "commit.parent_id")
            if self.parent_id == self.version_id:
                raise CommitFormatError(
                    f"commit {self.version_id} names itself as its parent"
                )
        _check_int(self.round, "commit.round")
        created = _check_float(self.created, "commit.created", optional=False)
        if created is None or not math.isfinite(created):
            raise CommitFormatError(f"commit.created must be a finite time, got {created!r}")
        object.__setattr__(self, "created", created)
        if not isinstance(self.contributions, tuple) or not all(
            isinstance(c, Contribution) for c in self.contributions
        ):
            raise CommitFormatError("commit.contributions must be a tuple of Contribution")
        loss = _check_float(self.validation_loss, "commit.validation_loss", optional=True)
        object.__setattr__(self, "validation_loss", loss)
        check_hex(self.state_checksum, "commit.state_checksum")

    @property
    def is_genesis(self) -> bool:
        """True for the swarm's initial version (no parent)."""
        return self.parent_id is None

    @property
    def accepted(self) -> tuple[Contribution, ...]:
        """Contributions merged into this version."""
        return tuple(c for c in self.contributions if c.accepted)

    @property
    def rejected(self) -> tuple[Contribution, ...]:
        """Contributions the swarm turned down (with their reasons)."""
        return tuple(c for c in self.contributions if not c.accepted)

    _FIELDS = ("version_id", "parent_id", "round", "created", "contributions",
               "validation_loss", "state_checksum")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of msgpack/JSON-friendly values (contributions as a list of dicts)."""
        return {
            "version_id": self.version_id,
            "parent_id": self.parent_id,
            "round": self.round,
            "created": self.created,
            "contributions": [c.to_dict() for c in self.contributions],
            "validation_loss": self.validation_loss,
            "state_checksum": self.state_checksum,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionCommit:
        """Build from :meth:`to_dict` output; raises :class:`CommitFormatError` if malformed."""
        d = _require(data, cls._FIELDS, "commit")
        raw = d["contributions"]
        if not isinstance(raw, (list, tuple)):
            raise CommitFormatError(
                f"commit.contributions must be a list, got {type(raw).__name__}"
            )
        return cls(
            version_id=d["version_id"],
            parent_id=d["parent_id"],
            round=d["round"],
            created=d["created"],
            contributions=tuple(Contribution.from_dict(c) for c in raw),
            validation_loss=d["validation_loss"],
            state_checksum=d["state_checksum"],
        )
