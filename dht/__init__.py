"""The swarm's records on the hivemind DHT: keys, schemas, signing, discovery.

Typical use (a peer)::

    identity = load_or_create_identity(data_dir)
    dht = start_dht(initial_peers=peers, identity=identity, swarm="demo")
    records = SwarmRecords(dht, identity, "demo")
    genesis = records.establish_genesis(candidate)
    ...
    dht.shutdown()
"""

from swarmtrain.dht.allowlist import AllowListError, load_allowed_peers
from swarmtrain.dht.bootstrap import (
    BootstrapError,
    ClockSkewError,
    DeadBootstrapError,
    IdentityTakenError,
    MalformedMultiaddrError,
    UnreachableError,
    is_loopback_host,
    start_dht,
    visible_maddrs,
)
from swarmtrain.dht.identity import Identity, IdentityError, load_identity, load_or_create_identity
from swarmtrain.dht.keys import InvalidRoundError, InvalidSwarmNameError, KeyFamily, validate_swarm_name
from swarmtrain.dht.records import (
    DHTTimeoutError,
    GenesisNotStoredError,
    RecordOwnershipError,
    RecordTTLs,
    SwarmRecords,
)
from swarmtrain.dht.schemas import (
    MAX_DIGESTS_PER_RECORD,
    REASON_CHARS,
    CommitRecord,
    GenesisRecord,
    PeerRecord,
    ResultRecord,
    SwarmRecord,
    Verdict,
    ValidationError,
    VoteRecord,
)
from swarmtrain.dht.validator import InvalidRecordError, SwarmRecordValidator, swarm_validators

__all__ = [
    "MAX_DIGESTS_PER_RECORD",
    "REASON_CHARS",
    "AllowListError",
    "BootstrapError",
    "ClockSkewError",
    "CommitRecord",
    "DHTTimeoutError",
    "DeadBootstrapError",
    "GenesisNotStoredError",
    "GenesisRecord",
    "Identity",
    "IdentityError",
    "IdentityTakenError",
    "InvalidRecordError",
    "InvalidRoundError",
    "InvalidSwarmNameError",
    "KeyFamily",
    "MalformedMultiaddrError",
    "PeerRecord",
    "RecordOwnershipError",
    "RecordTTLs",
    "ResultRecord",
    "SwarmRecord",
    "SwarmRecordValidator",
    "SwarmRecords",
    "UnreachableError",
    "ValidationError",
    "Verdict",
    "VoteRecord",
    "load_identity",
    "load_or_create_identity",
    "start_dht",
    "swarm_validators",
    "validate_swarm_name",
    "is_loopback_host",
    "load_allowed_peers",
    "visible_maddrs",
]
