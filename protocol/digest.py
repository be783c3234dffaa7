"""BLAKE2b-256 digests that name updates, model states and versions.

Every digest here is computed over a canonical byte form, so two peers holding equal
data compute equal digests whatever order they built it in. Except the update digest
(plain BLAKE2b-256 of the payload, checkable with ``b2sum -l 256``), each kind of
digest starts with its own domain prefix: bytes hashed as one kind can never be passed
off as another, e.g. a state checksum as a version id. Fields are length-prefixed so
concatenations are unambiguous.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Iterable, Mapping

import torch

DIGEST_SIZE = 32

_STATE_PREFIX = b"swarmtrain/state/v1\x00"
_VERSION_PREFIX = b"swarmtrain/version/v1\x00"
_GENESIS_PREFIX = b"swarmtrain/genesis/v1\x00"


def _blake2b_256(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for part in parts:
        h.update(part)
    return h.digest()


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def _field(data: bytes) -> bytes:
    return _u64(len(data)) + data


def blob_hasher() -> "hashlib._Hash":
    """An incremental :func:`blob_digest`, for bytes verified as they arrive."""
    return hashlib.blake2b(digest_size=DIGEST_SIZE)


def blob_digest(data: bytes) -> bytes:
    """BLAKE2b-256 of bytes as they travel or lie on disk (payloads, state files)."""
    return _blake2b_256(bytes(data))


def update_digest(payload: bytes) -> bytes:
    """BLAKE2b-256 of an encoded update's bytes: the id its commitment carries."""
    return blob_digest(payload)


def state_checksum(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """BLAKE2b-256 over tensors in sorted-name order: name, dtype, shape, raw bytes.

    Raw bytes are the row-major contents in the tensor's own dtype, little-endian, so
    any difference in any bit (-0.0 vs 0.0 included) changes the checksum, while dict
    insertion order, strides and devices do not.
    """
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    h.update(_STATE_PREFIX + _u64(len(tensors)))
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state entry {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
        h.update(_field(name.encode("utf-8")))
        h.update(_field(str(tensor.dtype).removeprefix("torch.").encode("ascii")))
        h.update(_u64(tensor.dim()) + b"".join(_u64(d) for d in tensor.shape))
        h.update(_field(_little_endian_bytes(tensor)))
    return h.digest()


def _little_endian_bytes(tensor: torch.Tensor) -> bytes:
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    if data.numel() == 0:
        return b""
    # A uint8 view handles dtypes numpy lacks (bfloat16); big-endian hosts swap bytes
    # so the canonical form is the same everywhere.
    raw = data.view(torch.uint8).numpy().reshape(data.numel(), data.element_size())
    if sys.byteorder == "big":
        raw = raw[:, ::-1]
    return raw.tobytes()


def version_id(parent: bytes, accepted_digests: Iterable[bytes]) -> bytes:
    """Id of the version made from ``parent`` by merging the accepted updates.

    Digests are sorted, so the id does not depend on the order in which a peer learned
    of them; the count is hashed so a merge of nothing still gets a new id.
    Duplicates are hashed as given (deduplicating is the merge's job, and the id must
    describe exactly what was merged).
    """
    _check_digest("parent", parent)
    digests = list(accepted_digests)
    for d in digests:
        _check_digest("accepted digest", d)
    digests = sorted(bytes(d) for d in digests)
    return _blake2b_256(_VERSION_PREFIX, bytes(parent), _u64(len(digests)), *digests)


def genesis_version_id(initial_state_checksum: bytes) -> bytes:
    """Id of version 0, derived from the initial parameters' checksum."""
    _check_digest("initial state checksum", initial_state_checksum)
    return _blake2b_256(_GENESIS_PREFIX, bytes(initial_state_checksum))


def _check_digest(what: str, value: bytes) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != DIGEST_SIZE:
        raise ValueError(f"{what} must be {DIGEST_SIZE} bytes (a BLAKE2b-256 digest), got {value!r:.80}")
