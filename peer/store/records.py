"""The on-disk record of one version: its commit plus where and what its state file is.

Written as a small JSON file (``commits/<version id>.json``) so that ``cat`` and ``jq``
can read a peer's history without swarmtrain. It carries the state file's size and
BLAKE2b-256 digest: the store uses the size for a cheap "is it complete" check and the
digest to refuse a damaged file before it is ever loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from swarmtrain.protocol.digest import blob_digest

from .commit import VersionCommit
from .errors import CommitFormatError, StoreError

RECORD_FORMAT = 1
RECORD_SUFFIX = ".json"
STATE_SUFFIX = ".safetensors"
_STATE_NAME = re.compile(r"([0-9a-f]+)\.([0-9a-f]{16})\.safetensors")


def file_digest(data: bytes) -> str:
    """BLAKE2b-256 hex digest of a state file's bytes."""
    return blob_digest(data).hex()


def state_file_name(version_id: str, digest: str) -> str:
    """``<version id>.<first 16 digest chars>.safetensors``.

    The digest in the name means a version whose state is replaced (a resync after a
    determinism bug keeps the version id but changes the bytes) gets a new file; the old
    file stays valid until the record points at the new one.
    """
    return f"{version_id}.{digest[:16]}{STATE_SUFFIX}"


def version_of_state_file(name: str) -> str | None:
    """The version id a state file name belongs to, or None if it is not one of ours."""
    match = _STATE_NAME.fullmatch(name)
    return match.group(1) if match else None


@dataclass(frozen=True)
class StoredVersion:
    """A commit and the state file that holds its tensors (which may have been pruned)."""

    commit: VersionCommit
    state_file: str
    state_size: int
    state_digest: str

    @property
    def version_id(self) -> str:
        """The commit's version id."""
        return self.commit.version_id


def encode_record(record: StoredVersion) -> bytes:
    """JSON bytes for ``commits/<id>.json`` (sorted keys: same record, same bytes)."""
    doc = {
        "format": RECORD_FORMAT,
        "commit": record.commit.to_dict(),
        "state": {
            "file": record.state_file,
            "size": record.state_size,
            "blake2b": record.state_digest,
        },
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _bad(path: Path, why: str) -> StoreError:
    return StoreError(
        f"commit record {path} is damaged ({why}); delete it (and HEAD if it names this "
        "version) so the peer falls back to the previous version, or restore it from a backup"
    )


def decode_record(data: bytes, path: Path) -> StoredVersion:
    """Parse a record read from ``path``; raises :class:`StoreError` naming ``path``."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(path, f"not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise _bad(path, "top level is not an object")
    if doc.get("format") != RECORD_FORMAT:
        raise StoreError(
            f"commit record {path} has format {doc.get('format')!r}, this swarmtrain reads "
            f"format {RECORD_FORMAT}; upgrade swarmtrain or use a data dir it wrote"
        )
    try:
        commit = VersionCommit.from_dict(doc.get("commit"))  # type: ignore[arg-type]
    except CommitFormatError as err:
        raise _bad(path, str(err)) from err
    if path.name != commit.version_id + RECORD_SUFFIX:
        raise _bad(path, f"it holds version {commit.version_id}, not the one in its name")
    state = doc.get("state")
    if not isinstance(state, dict):
        raise _bad(path, "field state is missing or not an object")
    name, size, digest = state.get("file"), state.get("size"), state.get("blake2b")
    if not isinstance(name, str) or version_of_state_file(name) != commit.version_id:
        raise _bad(path, f"state.file {name!r:.80} is not a state file of this version")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(path, f"state.size {size!r:.40} is not a byte count")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _bad(path, "state.blake2b is not a 64-character hex digest")
    if not name.startswith(f"{commit.version_id}.{digest[:16]}"):
        raise _bad(path, "state.file does not match state.blake2b")
    return StoredVersion(commit=commit, state_file=name, state_size=size, state_digest=digest)
