"""The record validator for a swarm's key families, used with hivemind's RSASignatureValidator.

hivemind runs validators in decreasing ``priority``: the RSA validator (priority 10) checks
the owner's signature and strips it, then :class:`SwarmRecordValidator` (priority 0) sees
the bare value. It only ever sees *hashed* keys, so it recognises our keys by a table of
their hashed ids: the two static keys of the swarm (genesis, peers) and the three per-round
keys of a window of rounds. Keys outside the table pass untouched, so the node still
stores and relays other applications' records.

For our keys it refuses, on store and on every read from another node:

- a plain (non-dictionary) value: stored with a later expiration it would replace the
  whole dictionary of per-peer entries on every node (docs/hivemind.md);
- a subkey that is not exactly one ``[owner:ssh-rsa ...]`` marker (bytes), so an identity
  owns at most one entry per key;
- a value that does not decode, fails the family's schema, or names a peer id other than
  the one derived from the marker (owner.py): nobody can speak for another peer;
- in a private swarm (``allowed``, allowlist.py), an entry owned by an identity off the
  list: strangers can neither write nor have their writes relayed by a member.

Round window: the table covers rounds ``[r - ROUNDS_BEHIND, r + ROUNDS_AHEAD)`` around the
rounds a peer touches; records.py moves it forward with ``DHT.add_validators``, which hands
a new instance to the DHT process, where :meth:`merge_with` folds it into the live one. The
pickled instance carries only the swarm name, the ranges and the allow-list, never the
table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import msgpack
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from pydantic import ValidationError

from swarmtrain.dht.identity import Identity
from swarmtrain.dht.keys import (
    ROUND_FAMILIES,
    STATIC_FAMILIES,
    KeyFamily,
    key_id,
    round_key,
    static_key,
    validate_round,
    validate_swarm_name,
)
from swarmtrain.dht.owner import InvalidOwnerMarkerError, peer_id_from_owner_marker
from swarmtrain.dht.schemas import MAX_RECORD_BYTES, GenesisRecord, SwarmRecord, record_type

__all__ = [
    "MAX_COVERED_ROUNDS",
    "ROUNDS_AHEAD",
    "ROUNDS_BEHIND",
    "InvalidRecordError",
    "SwarmRecordValidator",
    "parse_entry",
    "round_window",
    "swarm_validators",
]

logger = logging.getLogger(__name__)

ROUNDS_BEHIND = 64  # late readers of recent results and votes stay protected
ROUNDS_AHEAD = 256  # the window moves once every ~200 rounds, not every round
# Bound on the table (3 ids per round, ~150 B each): 2048 rounds is ~1 MB at most.
MAX_COVERED_ROUNDS = 2048

# A stripped value a little over the schema cap cannot be a valid record; refuse it
# before paying for msgpack and pydantic.
_MAX_VALUE_BYTES = MAX_RECORD_BYTES + 1024


class InvalidRecordError(ValueError):
    """A per-peer entry of one of our keys is malformed, mis-owned or fails its schema."""


def parse_entry(family: KeyFamily, subkey: object, value: object, *, swarm: str,
                allowed: frozenset[str] | None = None) -> tuple[str, SwarmRecord]:
    """Check one decoded entry of a ``family`` key of ``swarm``; return (owner peer id, record).

    ``subkey`` must be the owner's marker (bytes) and ``value`` the record's wire dict;
    in a private swarm (``allowed``) the owner must be on the list. Used both by the
    validator inside the DHT process and by readers in the main process.
    """
    if not isinstance(subkey, bytes):
        raise InvalidRecordError(f"subkey must be an owner marker (bytes), got {type(subkey).__name__}")
    try:
        owner = peer_id_from_owner_marker(subkey)
    except InvalidOwnerMarkerError as error:
        raise InvalidRecordError(str(error)) from error
    if allowed is not None and owner not in allowed:
        raise InvalidRecordError(f"{family.name} entry owned by {owner}, who is not on this private swarm's list")
    model = record_type(family)
    try:
        record = model.model_validate(value)
    except ValidationError as error:
        raise InvalidRecordError(f"{family.name} entry fails its schema: {error.error_count()} error(s)") from error
    claimed = record.owner_peer_id
    if claimed is not None and claimed != owner:
        raise InvalidRecordError(f"{family.name} entry claims peer {claimed} but is owned by {owner}")
    if isinstance(record, GenesisRecord) and record.swarm != swarm:
        raise InvalidRecordError(f"genesis of swarm {record.swarm!r} stored under swarm {swarm!r}")
    return owner, record


def round_window(round_: int) -> range:
    """The rounds a peer working on ``round_`` needs its validator to cover."""
    validate_round(round_)
    return range(max(0, round_ - ROUNDS_BEHIND), round_ + ROUNDS_AHEAD)


class SwarmRecordValidator(RecordValidatorBase):
    """Validates the records of one swarm; see the module docstring for the rules."""

    def __init__(self, swarm: str, rounds: range = range(0, ROUNDS_AHEAD),
                 allowed: frozenset[str] | None = None) -> None:
        self._setup(swarm, allowed)
        self._cover(rounds)

    def _setup(self, swarm: str, allowed: frozenset[str] | None) -> None:
        self._swarm = validate_swarm_name(swarm)
        self._allowed = allowed
        self._rounds: set[int] = set()
        self._table: dict[bytes, KeyFamily] = {}
        for family in STATIC_FAMILIES:
            self._table[key_id(static_key(swarm, family))] = family

    @property
    def swarm(self) -> str:
        """The swarm whose keys this validator guards."""
        return self._swarm

    @property
    def covered_rounds(self) -> range:
        """The smallest range holding every covered round (empty when none are)."""
        if not self._rounds:
            return range(0)
        return range(min(self._rounds), max(self._rounds) + 1)

    def family_of(self, hashed_key: bytes) -> KeyFamily | None:
        """The family of a hashed key, or None if it is not one of our (covered) keys."""
        return self._table.get(hashed_key)

    def _cover(self, rounds: Iterable[int]) -> None:
        for round_ in rounds:
            if round_ in self._rounds:
                continue
            self._rounds.add(validate_round(round_))
            for family in ROUND_FAMILIES:
                self._table[key_id(round_key(self._swarm, family, round_))] = family
        overflow = len(self._rounds) - MAX_COVERED_ROUNDS
        if overflow > 0:  # forget the oldest rounds: their records have expired or are settled
            for round_ in sorted(self._rounds)[:overflow]:
                self._rounds.discard(round_)
                for family in ROUND_FAMILIES:
                    self._table.pop(key_id(round_key(self._swarm, family, round_)), None)

    def validate(self, record: DHTRecord) -> bool:
        """Whether the DHT may store or return ``record`` (others' keys always may)."""
        family = self._table.get(record.key)
        if family is None:
            return True
        try:
            self._check(family, record)
        except InvalidRecordError as error:
            logger.debug("refused %s entry of swarm %r: %s", family.name, self._swarm, error)
            return False
        return True

    def _check(self, family: KeyFamily, record: DHTRecord) -> None:
        if record.subkey in DHTProtocol.RESERVED_SUBKEYS:
            raise InvalidRecordError("a plain value under a per-peer key would replace every entry")
        if len(record.value) > _MAX_VALUE_BYTES:
            raise InvalidRecordError(f"value is {len(record.value)} bytes, the limit is {_MAX_VALUE_BYTES}")
        try:
            # No ext_hook: hivemind's ext types (tuples, nested DHT dictionaries) have no place
            # in our records and stay as ExtType objects that the schema refuses.
            subkey = msgpack.unpackb(record.subkey, raw=False)
            value = msgpack.unpackb(record.value, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as error:
            raise InvalidRecordError(f"entry does not decode: {error}") from error
        parse_entry(family, subkey, value, swarm=self._swarm, allowed=self._allowed)

    # Below RSASignatureValidator (10): validation runs in decreasing priority, so we see
    # values whose signature has been checked and stripped.
    @property
    def priority(self) -> int:
        """hivemind's ordering hook; see the comment above."""
        return 0

    def merge_with(self, other: RecordValidatorBase) -> bool:
        """Fold another validator of the same swarm into this one (how the window moves)."""
        if not isinstance(other, SwarmRecordValidator) or other._swarm != self._swarm:
            return False
        if other._allowed != self._allowed:
            # A window move always carries the node's own list; another list is a bug of
            # the caller, and silently keeping either would open or close the swarm.
            raise ValueError("a validator with another allow-list cannot be merged into this one")
        self._cover(sorted(other._rounds))
        return True

    def __getstate__(self) -> dict[str, object]:
        # The table is ~150 B per key; rebuild it on the other side so the pickle sent to
        # the DHT process stays far below the ~16 KiB that crashes it.
        allowed = None if self._allowed is None else sorted(self._allowed)
        return {"swarm": self._swarm, "ranges": _as_ranges(self._rounds), "allowed": allowed}

    def __setstate__(self, state: dict[str, object]) -> None:
        swarm, ranges, allowed = state["swarm"], state["ranges"], state.get("allowed")
        if not isinstance(swarm, str) or not isinstance(ranges, list) or not isinstance(allowed, (list, type(None))):
            raise TypeError("SwarmRecordValidator state must be {'swarm': str, 'ranges': list[range], "
                            "'allowed': list[str] | None}")
        self._setup(swarm, None if allowed is None else frozenset(allowed))
        for covered in ranges:
            self._cover(covered)


def _as_ranges(rounds: set[int]) -> list[range]:
    ranges: list[range] = []
    for round_ in sorted(rounds):
        if ranges and ranges[-1].stop == round_:
            ranges[-1] = range(ranges[-1].start, round_ + 1)
        else:
            ranges.append(range(round_, round_ + 1))
    return ranges


def swarm_validators(
    identity: Identity, swarm: str, rounds: range = range(0, ROUNDS_AHEAD), allowed: frozenset[str] | None = None
) -> list[RecordValidatorBase]:
    """The validators a swarmtrain DHT node runs: signatures first, then our families
    (``allowed``: a private swarm's members, see allowlist.py).

    SwarmRecordValidator alone would accept unsigned entries under any marker; it is only
    safe together with the RSA validator, so always build them here.
    """
    return [RSASignatureValidator(identity.private_key), SwarmRecordValidator(swarm, rounds, allowed)]
