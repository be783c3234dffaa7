"""Sans-IO protocol layer: the update codec, digests and typed errors (bytes in, values out)."""

from .codec import (
    DEFAULT_MAX_ELEMENTS,
    FORMAT_VERSION,
    DecodedUpdate,
    decode_update,
    encode_update,
    encode_update_and_reconstruct,
    read_update,
)
from .digest import blob_digest, genesis_version_id, state_checksum, update_digest, version_id
from .errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "FORMAT_VERSION",
    "DecodedUpdate",
    "ProtocolError",
    "decode_update",
    "encode_update",
    "encode_update_and_reconstruct",
    "genesis_version_id",
    "read_update",
    "state_checksum",
    "update_digest",
    "blob_digest",
    "version_id",
]
