"""The values of the swarm's DHT records, as strict pydantic models.

Every record is read from untrusted peers, so the models are strict (no type coercion
beyond int -> float), forbid unknown fields, and cap every size: a DHT call whose pickled
arguments pass ~16 KiB can kill hivemind's DHT process (docs/hivemind.md), so each
record's msgpack form is capped at :data:`MAX_RECORD_BYTES`, well below that. Bytes
(updates, states) never go in the DHT; they move over p2p streams.

The wire form of a record is ``model.to_wire()``: a plain dict of str, int, float, bool,
None, lists and dicts, which hivemind stores with msgpack.
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Any, ClassVar, Self

import msgpack
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from swarmtrain.dht.keys import SWARM_NAME_RULE, KeyFamily

__all__ = [
    "DIGEST_HEX_LEN",
    "LOSS_TREND_LEN",
    "MAX_ADDRESSES",
    "MAX_CONFIG_BYTES",
    "MAX_DIGESTS_PER_RECORD",
    "MAX_RECORD_BYTES",
    "REASON_CHARS",
    "CommitRecord",
    "GenesisRecord",
    "PeerRecord",
    "ResultRecord",
    "SwarmRecord",
    "Verdict",
    "VoteRecord",
    "ValidationError",
    "record_type",
]

# BLAKE2b-256 everywhere (update digests, version ids, state checksums): 32 bytes, 64 hex.
DIGEST_HEX_LEN = 64
# One record, packed; leaves room for the owner marker (~400 B) and signature (~350 B)
# that hivemind adds, and for pickling, under the ~16 KiB that crashes the DHT process.
MAX_RECORD_BYTES = 8 * 1024
# The genesis config is settings, not weights.
MAX_CONFIG_BYTES = 4 * 1024
_MAX_CONFIG_DEPTH = 8
# 64 digests (votes or accepted updates) pack to ~4-6 KiB; a round with more updates than
# that needs the list moved out of the DHT (a stream) rather than a bigger record.
MAX_DIGESTS_PER_RECORD = 64
MAX_ADDRESSES = 8
# Losses a heartbeat carries for the status view's trend (~150 bytes packed).
LOSS_TREND_LEN = 16

Hex64 = Annotated[str, StringConstraints(pattern=rf"^[0-9a-f]{{{DIGEST_HEX_LEN}}}$")]
# base58 (bitcoin alphabet); RSA PeerIDs are 46 characters ("Qm..."), Ed25519 ones 52.
PeerIdStr = Annotated[str, StringConstraints(pattern=r"^[1-9A-HJ-NP-Za-km-z]{32,64}$")]
SwarmName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
MultiaddrStr = Annotated[str, StringConstraints(pattern=r"^/[!-~]{1,255}$")]  # printable ASCII, no spaces
ShortText = Annotated[str, StringConstraints(pattern=r"^[ -~]{1,64}$")]
# Why a checker rejected an update ("digest mismatch", "norm 78.6 above 4.0x median 8.0"):
# printable ASCII, short, so that a full ballot of 64 verdicts still fits one record.
REASON_CHARS = 40
ReasonText = Annotated[str, StringConstraints(pattern=rf"^[ -~]{{0,{REASON_CHARS}}}$")]
TaskName = Annotated[str, StringConstraints(pattern=r"^[ -~]{1,256}$")]
Role = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Round = Annotated[int, Field(ge=0, le=2**40)]
Timestamp = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class SwarmRecord(BaseModel):
    """Base of all record values: strict, closed, immutable, size-capped."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    # The family whose key holds this record, and the field that must equal the libp2p
    # PeerID of the entry's owner (None: not bound to the writer, see GenesisRecord).
    family: ClassVar[KeyFamily]
    owner_field: ClassVar[str | None]

    @model_validator(mode="after")
    def _cap_packed_size(self) -> Self:
        size = len(self.packed())
        if size > MAX_RECORD_BYTES:
            raise ValueError(f"record packs to {size} bytes, the limit is {MAX_RECORD_BYTES}")
        return self

    def to_wire(self) -> dict[str, Any]:
        """The plain dict stored in the DHT."""
        return self.model_dump(mode="python")

    def packed(self) -> bytes:
        """Canonical msgpack bytes of the record (what the size cap and digests use)."""
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    @property
    def owner_peer_id(self) -> str | None:
        """The peer id the record claims for its writer, if the family binds one."""
        return None if self.owner_field is None else getattr(self, self.owner_field)


class GenesisRecord(SwarmRecord):
    """What every peer of a swarm must agree on before round 0."""

    family: ClassVar[KeyFamily] = KeyFamily.GENESIS
    # Not bound to the writer: every peer that adopted a genesis re-publishes the same
    # record under its own subkey, so the genesis outlives its creator (records.py).
    owner_field: ClassVar[str | None] = None

    protocol_version: Annotated[int, Field(ge=1, le=65535)]
    swarm: SwarmName = Field(description=SWARM_NAME_RULE)
    task: TaskName
    config: dict[str, Any]
    initial_checksum: Hex64
    genesis_time: Timestamp
    creator: PeerIdStr

    @field_validator("config")
    @classmethod
    def _config_is_small_plain_data(cls, config: dict[str, Any]) -> dict[str, Any]:
        _check_plain_data(config, depth=0)
        size = len(msgpack.packb(config, use_bin_type=True))
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"config packs to {size} bytes, the limit is {MAX_CONFIG_BYTES}: keep weights out of it")
        return config

    def digest(self) -> str:
        """BLAKE2b-256 hex of the canonical record: pin a genesis by this (records.read_genesis)."""
        return hashlib.blake2b(self.packed(), digest_size=32).hexdigest()

    def order_key(self) -> tuple[float, str, str]:
        """The genesis rule: earliest genesis_time, then smallest creator id, then digest."""
        return (self.genesis_time, self.creator, self.digest())


class PeerRecord(SwarmRecord):
    """A peer's heartbeat: where to reach it and how it is doing."""

    family: ClassVar[KeyFamily] = KeyFamily.PEERS
    owner_field: ClassVar[str | None] = "peer_id"

    peer_id: PeerIdStr
    addresses: Annotated[list[MultiaddrStr], Field(max_length=MAX_ADDRESSES)]
    round: Round
    version_id: Hex64
    state_checksum: Hex64
    role: Role
    last_val_loss: FiniteFloat | None
    bytes_sent: Count
    bytes_received: Count
    updates_accepted: Count
    updates_rejected: Count
    software_version: ShortText
    time: Timestamp
    last_round_s: Annotated[float, Field(ge=0.0, le=1e6, allow_inf_nan=False)] | None = None  # wall time
    # Times this peer downloaded the majority's state because its own merge differed or
    # failed; shown by `status`, since a swarm that resyncs every round has a bug.
    resyncs: Count = 0
    # Share of wall time spent in inner steps since the peer started training, and its
    # training speed: what tells a user whether the swarm keeps their hardware busy.
    utilisation: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    samples_per_s: Annotated[float, Field(ge=0.0, le=1e9, allow_inf_nan=False)] | None = None
    # Held-out loss of the last versions this peer held, oldest first (the trend `status
    # --watch` draws). Optional, so heartbeats without it stay valid.
    loss_trend: Annotated[list[FiniteFloat], Field(max_length=LOSS_TREND_LEN)] | None = None


class CommitRecord(SwarmRecord):
    """A signed promise: the update with this digest is what I will serve this round."""

    family: ClassVar[KeyFamily] = KeyFamily.COMMITS
    owner_field: ClassVar[str | None] = "peer_id"

    peer_id: PeerIdStr
    digest: Hex64
    size: Annotated[int, Field(ge=1, le=2**40)]
    samples: Annotated[int, Field(ge=1, le=2**53)]
    base_version: Hex64
    train_loss: FiniteFloat
    # The proof of work on the author's identity (protocol/work.py), for a swarm whose
    # genesis prices identities; 0 (and absent, from older peers) where it does not.
    work: Annotated[int, Field(ge=0, lt=2**64)] = 0


class Verdict(BaseModel):
    """One voter's judgement of one update."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    accept: bool
    loss_delta: FiniteFloat  # held-out loss with the update minus without it (negative = helps)
    # Why it was rejected, so that peers not assigned to it can record why ("" = accepted,
    # or left out to keep the record under its size cap).
    reason: ReasonText = ""


class VoteRecord(SwarmRecord):
    """One voter's verdicts on the updates it checked this round."""

    family: ClassVar[KeyFamily] = KeyFamily.VOTES
    owner_field: ClassVar[str | None] = "voter"

    voter: PeerIdStr
    votes: Annotated[dict[Hex64, Verdict], Field(max_length=MAX_DIGESTS_PER_RECORD)]
    # The hash of the commitment set this voter froze at the commit deadline and judged
    # (peer/round/commitset.py): peers decide over the set most voters judged, so a
    # commitment landing right at the deadline cannot split them. Absent (None) from
    # older peers.
    commit_set: Hex64 | None = None


class ResultRecord(SwarmRecord):
    """The version a peer computed at the end of a round (the agree step)."""

    family: ClassVar[KeyFamily] = KeyFamily.RESULT
    owner_field: ClassVar[str | None] = "peer_id"

    peer_id: PeerIdStr
    version_id: Hex64
    state_checksum: Hex64
    accepted: Annotated[list[Hex64], Field(max_length=MAX_DIGESTS_PER_RECORD)]

    @field_validator("accepted")
    @classmethod
    def _no_duplicates(cls, accepted: list[str]) -> list[str]:
        if len(set(accepted)) != len(accepted):
            raise ValueError("accepted digests must not repeat")
        return accepted


_BY_FAMILY: dict[KeyFamily, type[SwarmRecord]] = {
    model.family: model for model in (GenesisRecord, PeerRecord, CommitRecord, VoteRecord, ResultRecord)
}


def record_type(family: KeyFamily) -> type[SwarmRecord]:
    """The model of the records stored under keys of ``family``."""
    return _BY_FAMILY[family]


def _check_plain_data(value: object, depth: int) -> None:
    # Exactly the types that survive a msgpack round trip unchanged, so every peer reads
    # back the config that was written (a tuple would come back as a list, and bytes or
    # ext types would make the genesis digest depend on the reader).
    if depth > _MAX_CONFIG_DEPTH:
        raise ValueError(f"config nests deeper than {_MAX_CONFIG_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:  # msgpack's integer range
            raise ValueError(f"config integer {value} is outside msgpack's 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("config floats must be finite")
        return
    if isinstance(value, list):
        for item in value:
            _check_plain_data(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"config keys must be strings, got {type(key).__name__}")
            _check_plain_data(item, depth + 1)
        return
    raise ValueError(f"config values must be None, bool, int, float, str, list or dict, got {type(value).__name__}")
