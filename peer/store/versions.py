"""The version store: every merged model version is a commit kept on the peer's disk.

Layout of a data dir::

    LOCK                                    flock held by the one peer that writes here
    HEAD                                    version id of the version to resume from
    commits/<version id>.json               commit record (kept for every version, forever)
    states/<version id>.<digest16>.safetensors
                                            params ("params/*") + outer optimizer state
                                            ("extra/*"); only the newest `keep` and HEAD

Write order makes a crash at any point harmless: state file, then commit record, then
HEAD, each by atomic rename (:mod:`.store_files`). A version therefore exists only once its
record exists, and its record is only written after its state file is complete. On start
a writing store removes leftover temp files and unreferenced state files, and moves a HEAD
whose state is missing or damaged back to the newest complete version, so resume never
loads a half-written file.

Damaged records: :meth:`VersionStore.history` skips them with a warning (one bad file
must not hide the rest of the history from ``swarmtrain log``), while :meth:`head`,
:meth:`commit`, :meth:`load` and a writing store's start-up raise :class:`StoreError`
naming the file, because resuming from a guess would be worse than stopping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import torch

from .commit import Contribution, VersionCommit, check_hex
from .errors import CommitFormatError, StoreError
from .files import DirLock, atomic_write, fsync_dir, io_error, is_temp_name, remove_temp_files
from .records import (
    RECORD_SUFFIX,
    StoredVersion,
    decode_record,
    encode_record,
    file_digest,
    state_file_name,
    version_of_state_file,
)
from .state import pack_export, pack_state, unpack_state

__all__ = [
    "CommitFormatError",
    "Contribution",
    "StateChecksum",
    "StoreError",
    "VersionCommit",
    "VersionStore",
]

logger = logging.getLogger(__name__)

# (params, extra_state) -> state checksum hex; supplied by the aggregation code, which
# owns the canonical order the checksum is defined over.
StateChecksum = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], str]

COMMITS_DIR = "commits"
STATES_DIR = "states"
HEAD_NAME = "HEAD"
_SHOWN_CANDIDATES = 10


def _order(commit: VersionCommit) -> tuple[int, float, str]:
    """History order: by round, then merge time; the id only breaks exact ties."""
    return (commit.round, commit.created, commit.version_id)


class VersionStore:
    """Commits and model states of one peer, crash-safe, with git-like version prefixes.

    ``keep`` is how many of the newest versions keep their tensor files (HEAD always
    does); commit records are tiny and kept for every version. A writing store (the
    default) takes an exclusive lock on the data dir and repairs it on start;
    ``read_only=True`` is for ``swarmtrain log``/``export`` beside a running peer.
    """

    def __init__(self, data_dir: Path, keep: int = 5, *, read_only: bool = False) -> None:
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise StoreError(
                f"keep must be an int >= 1 (HEAD always keeps its state), got {keep!r}"
            )
        self._dir = Path(data_dir)
        self._keep = keep
        self._read_only = read_only
        self._commits = self._dir / COMMITS_DIR
        self._states = self._dir / STATES_DIR
        self._head_path = self._dir / HEAD_NAME
        self._lock: DirLock | None = None
        # The peer may save from a worker thread while its event loop prunes or saves a
        # resynced state; one writer at a time keeps HEAD and pruning consistent.
        self._write_lock = threading.RLock()
        if read_only:
            if not self._commits.is_dir():
                raise StoreError(
                    f"no swarmtrain version store at {self._dir}; pass the --data-dir "
                    "a peer ran with"
                )
            return
        for directory in (self._dir, self._commits, self._states):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise io_error("create directory", directory, err) from err
        self._lock = DirLock(self._dir)
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The directory this store lives in."""
        return self._dir

    @property
    def keep(self) -> int:
        """How many of the newest versions keep their tensor files."""
        return self._keep

    @property
    def read_only(self) -> bool:
        """True when opened for reading beside a running peer."""
        return self._read_only

    def close(self) -> None:
        """Release the data-dir lock; reads still work, writes raise afterwards."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> VersionStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------

    def save(self, commit: VersionCommit, params: Mapping[str, torch.Tensor],
             extra_state: Mapping[str, torch.Tensor], *, make_head: bool = True) -> None:
        """Store a version: its parameters, outer optimizer state and commit record.

        ``make_head=False`` stores a version without resuming from it (e.g. an older
        version fetched for comparison). Saving an id that exists replaces its state,
        which is what a resync after a determinism bug does. On failure nothing of the
        new version is left behind and earlier versions are untouched.
        """
        self._check_writable("save a version")
        self._check_commit(commit)
        data = pack_state(params, extra_state)
        with self._write_lock:
            self._save_packed(commit, data, make_head)

    def save_from_bytes(self, commit: VersionCommit, data: bytes, *, make_head: bool = True,
                        checksum: StateChecksum | None = None) -> None:
        """Store a version from :meth:`state_bytes` output received from another peer.

        The bytes are parsed and validated first (malformed -> :class:`StoreError`);
        with ``checksum`` given, the state must also match ``commit.state_checksum``.
        """
        self._check_writable("save a version")
        self._check_commit(commit)
        params, extra = unpack_state(data, f"the peer sending version {commit.version_id}")
        if checksum is not None:
            got = checksum(params, extra)
            if got != commit.state_checksum:
                raise StoreError(
                    f"state received for version {commit.version_id} has checksum {got}, "
                    f"but the commit says {commit.state_checksum}; the sender holds a "
                    "different state or the bytes were damaged: fetch it from another peer"
                )
        # Re-packing normalises whatever header the sender wrote; packing is
        # deterministic, so an honest sender's bytes come out unchanged.
        packed = pack_state(params, extra)
        with self._write_lock:
            self._save_packed(commit, packed, make_head)

    def prune(self) -> list[str]:
        """Delete tensor files beyond the newest ``keep`` versions (never HEAD's).

        Commit records stay. Returns the version ids whose state was removed.
        """
        self._check_writable("prune")
        with self._write_lock:
            return self._prune()

    # -- reading ---------------------------------------------------------------------

    def history(self) -> list[VersionCommit]:
        """Every commit on record, oldest first; damaged records are skipped with a warning."""
        return [record.commit for record in self._records_sorted()]

    def lineage(self, version_id: str, limit: int | None = None) -> list[VersionCommit]:
        """``version_id``'s commit and its ancestors', newest first, at most ``limit``; ends
        early at the genesis or at a version whose commit is not here (one downloaded
        without its history) or is damaged (with a warning)."""
        out: list[VersionCommit] = []
        current: str | None = version_id
        while current is not None and (limit is None or len(out) < limit):
            try:
                record = self._record_if_present(current)
            except StoreError as error:
                logger.warning("history stops at version %s: %s", current, error)
                break
            if record is None:
                break
            out.append(record.commit)
            current = record.commit.parent_id
        return out

    def head(self) -> VersionCommit | None:
        """The version to resume from, or None for an empty store.

        Falls back (with a warning) to the newest version whose state file is complete
        when HEAD is missing or names a version without one. Raises :class:`StoreError`
        if HEAD's own commit record is damaged.
        """
        head_id = self._read_head_id()
        if head_id is not None:
            record = self._record_if_present(head_id)
            if record is not None and self._complete(record):
                return record.commit
            what = "no commit record" if record is None else "no complete state file"
            logger.warning("HEAD names version %s, which has %s; using the newest "
                           "complete version instead", head_id, what)
        fallback = self._newest_complete(verify=False)
        if head_id is None and fallback is not None:
            logger.warning("%s is missing; using the newest complete version %s",
                           self._head_path, fallback.version_id)
        return fallback.commit if fallback is not None else None

    def resolve(self, prefix: str) -> str:
        """The full version id for a unique prefix (like git); raises on unknown/ambiguous."""
        matches = self._match(prefix)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise StoreError(
                f"unknown version {prefix!r}: no commit in {self._commits} starts with it; "
                "run `swarmtrain log` to list versions"
            )
        shown = ", ".join(matches[:_SHOWN_CANDIDATES])
        if len(matches) > _SHOWN_CANDIDATES:
            shown += f" and {len(matches) - _SHOWN_CANDIDATES} more"
        raise StoreError(
            f"version prefix {prefix!r} is ambiguous, it matches {shown}; give more characters"
        )

    def commit(self, version_id: str) -> VersionCommit:
        """The commit for a version id or unique prefix."""
        return self._record(self.resolve(version_id)).commit

    def has_state(self, version_id: str) -> bool:
        """True if the version (id or unique prefix) is known and its tensor file is complete."""
        if not self._match(version_id):
            return False
        return self._complete(self._record(self.resolve(version_id)))

    def load(self, version_id: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(params, extra_state) of a kept version, bit-exact as saved; digest-checked."""
        record = self._record(self.resolve(version_id))
        data = self._read_state(record)
        return unpack_state(data, str(self._states / record.state_file))

    def state_bytes(self, version_id: str) -> bytes:
        """The stored safetensors bytes of params + extra state, for sending to a peer."""
        return self._read_state(self._record(self.resolve(version_id)))

    def export(self, version_id: str, out_path: Path) -> Path:
        """Write a version's parameters (plain names) to a .safetensors file, atomically.

        The header metadata holds ``swarmtrain.version_id``, ``swarmtrain.round``,
        ``swarmtrain.parent_id`` ("" for genesis), ``swarmtrain.state_checksum`` and
        ``swarmtrain.validation_loss`` ("" when unknown). Returns ``out_path``.
        """
        record = self._record(self.resolve(version_id))
        params, _extra = unpack_state(self._read_state(record),
                                      str(self._states / record.state_file))
        out = Path(out_path)
        if out.is_dir():
            raise StoreError(f"{out} is a directory; give a file name such as "
                             f"{out / (record.version_id[:12] + '.safetensors')}")
        if not out.parent.is_dir():
            raise StoreError(f"directory {out.parent} does not exist; create it first or "
                             "choose another output path")
        c = record.commit
        metadata = {
            "format": "pt",  # what transformers' loaders expect
            "swarmtrain.version_id": c.version_id,
            "swarmtrain.round": str(c.round),
            "swarmtrain.parent_id": c.parent_id or "",
            "swarmtrain.state_checksum": c.state_checksum,
            "swarmtrain.validation_loss": "" if c.validation_loss is None
            else repr(c.validation_loss),
        }
        atomic_write(out, pack_export(params, metadata))
        return out

    # -- internals -------------------------------------------------------------------

    def _check_writable(self, action: str) -> None:
        if self._read_only:
            raise StoreError(f"cannot {action}: {self._dir} was opened read-only; only "
                             "the peer that owns this data dir writes to it")
        if self._lock is None:
            raise StoreError(f"cannot {action}: the store at {self._dir} is closed; "
                             "open a new VersionStore")

    @staticmethod
    def _check_commit(commit: object) -> None:
        if not isinstance(commit, VersionCommit):
            raise StoreError(f"expected a VersionCommit, got {type(commit).__name__}")

    def _save_packed(self, commit: VersionCommit, data: bytes, make_head: bool) -> None:
        version_id = commit.version_id
        digest = file_digest(data)
        name = state_file_name(version_id, digest)
        state_path = self._states / name
        previous = self._previous_record(version_id)
        existed = state_path.exists()
        atomic_write(state_path, data)
        record = StoredVersion(commit=commit, state_file=name, state_size=len(data),
                               state_digest=digest)
        try:
            atomic_write(self._record_path(version_id), encode_record(record))
        except StoreError as err:
            # Without its record the new state file is an orphan: remove it now rather
            # than leave the disk fuller than it was (start-up would remove it too).
            if not existed:
                try:
                    state_path.unlink(missing_ok=True)
                except OSError as unlink_err:
                    err.add_note(f"also could not remove {state_path}: {unlink_err}")
            raise
        if previous is not None and previous.commit.state_checksum != commit.state_checksum:
            logger.warning("replaced the state of version %s (checksum %s -> %s): resync",
                           version_id, previous.commit.state_checksum[:12],
                           commit.state_checksum[:12])
        if make_head:
            self._write_head(version_id)
        if previous is not None and previous.state_file != name:
            self._remove_replaced_state(self._states / previous.state_file)
        self.prune()

    def _prune(self) -> list[str]:
        records = self._records_sorted()
        keep_ids = {r.version_id for r in records[-self._keep:]}
        head_id = self._read_head_id()
        if head_id is not None:
            keep_ids.add(head_id)
        pruned: list[str] = []
        for record in records:
            path = self._states / record.state_file
            if record.version_id in keep_ids or not path.exists():
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise io_error("remove old state file", path, err) from err
            pruned.append(record.version_id)
        if pruned:
            fsync_dir(self._states)
            logger.info("pruned the state of %d old version(s), kept their commits", len(pruned))
        return pruned

    def _remove_replaced_state(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            # The new version is fully saved; the old file is unreferenced now and the
            # next start-up deletes it, so failing the save here would mislead the caller.
            logger.warning("could not remove replaced state file %s (%s); it will be "
                           "removed at the next start", path, err)

    def _write_head(self, version_id: str) -> None:
        atomic_write(self._head_path, f"{version_id}\n".encode("ascii"))

    def _record_path(self, version_id: str) -> Path:
        return self._commits / (version_id + RECORD_SUFFIX)

    def _record_paths(self) -> list[Path]:
        if not self._commits.is_dir():
            return []
        paths = []
        for entry in self._commits.iterdir():
            name = entry.name
            if is_temp_name(name) or not name.endswith(RECORD_SUFFIX):
                continue
            try:
                check_hex(name[: -len(RECORD_SUFFIX)], "record name")
            except CommitFormatError:
                continue  # not ours (an editor backup, a stray file): not a version
            paths.append(entry)
        return sorted(paths)

    def _version_ids(self) -> list[str]:
        return [p.name[: -len(RECORD_SUFFIX)] for p in self._record_paths()]

    def _match(self, prefix: str) -> list[str]:
        if not isinstance(prefix, str):
            raise StoreError(f"a version must be given as a hex string, got "
                             f"{type(prefix).__name__}")
        wanted = prefix.strip().lower()
        try:
            check_hex(wanted, "version")
        except CommitFormatError:
            raise StoreError(f"version {prefix!r:.80} is not a hex version id or prefix of "
                             "one; run `swarmtrain log` to list versions") from None
        ids = self._version_ids()
        if wanted in ids:
            return [wanted]  # a full id wins even if it also prefixes a longer one
        return [i for i in ids if i.startswith(wanted)]

    def _read_record_file(self, path: Path) -> StoredVersion:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise io_error("read commit record", path, err) from err
        return decode_record(data, path)

    def _record(self, version_id: str) -> StoredVersion:
        record = self._record_if_present(version_id)
        if record is None:
            raise StoreError(f"unknown version {version_id}: no record "
                             f"{self._record_path(version_id)}; run `swarmtrain log`")
        return record

    def _record_if_present(self, version_id: str) -> StoredVersion | None:
        path = self._record_path(version_id)
        try:
            return self._read_record_file(path)
        except StoreError:
            if not path.exists():
                return None
            raise

    def _previous_record(self, version_id: str) -> StoredVersion | None:
        try:
            return self._record_if_present(version_id)
        except StoreError as err:
            # Being overwritten with a good record is the fix for a damaged one.
            logger.warning("replacing damaged record: %s", err)
            return None

    def _records_sorted(self) -> list[StoredVersion]:
        records = []
        for path in self._record_paths():
            try:
                records.append(self._read_record_file(path))
            except StoreError as err:
                logger.warning("skipping a version in the history: %s", err)
        return sorted(records, key=lambda r: _order(r.commit))

    def _complete(self, record: StoredVersion) -> bool:
        try:
            size = (self._states / record.state_file).stat().st_size
        except FileNotFoundError:
            return False
        except OSError as err:
            raise io_error("inspect state file", self._states / record.state_file, err) from err
        return size == record.state_size

    def _verified(self, record: StoredVersion) -> bool:
        try:
            self._read_state(record)
        except StoreError as err:
            logger.warning("%s", err)
            return False
        return True

    def _newest_complete(self, *, verify: bool) -> StoredVersion | None:
        for record in reversed(self._records_sorted()):
            if self._verified(record) if verify else self._complete(record):
                return record
        return None

    def _read_state(self, record: StoredVersion) -> bytes:
        path = self._states / record.state_file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"version {record.version_id} has no state on this peer ({path} is gone; "
                f"only the newest {self._keep} versions and HEAD keep their tensors); "
                "export a kept version or fetch this one from a peer that holds it"
            ) from None
        except OSError as err:
            raise io_error("read state file", path, err) from err
        if len(data) != record.state_size or file_digest(data) != record.state_digest:
            raise StoreError(
                f"state file {path} is damaged (expected {record.state_size} bytes with "
                f"BLAKE2b {record.state_digest[:16]}..., found {len(data)} bytes that do "
                "not match); delete it and restart the peer so it resyncs from the swarm"
            )
        return data

    def _read_head_id(self) -> str | None:
        try:
            text = self._head_path.read_bytes().decode("ascii", errors="replace").strip()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise io_error("read", self._head_path, err) from err
        try:
            return check_hex(text, "HEAD")
        except CommitFormatError:
            logger.warning("%s does not hold a version id (%r); ignoring it",
                           self._head_path, text[:80])
            return None

    # -- start-up recovery -----------------------------------------------------------

    def _recover(self) -> None:
        for directory in (self._dir, self._commits, self._states):
            for path in remove_temp_files(directory):
                logger.warning("removed %s left by an interrupted write", path)
        self._remove_orphan_states()
        self._repair_head()
        self.prune()

    def _remove_orphan_states(self) -> None:
        """Delete state files no record points at (a crash between the two writes)."""
        referenced: set[str] = set()
        damaged: set[str] = set()
        for path in self._record_paths():
            try:
                referenced.add(self._read_record_file(path).state_file)
            except StoreError:
                # Its state file may still be wanted once the record is repaired.
                damaged.add(path.name[: -len(RECORD_SUFFIX)])
        removed = False
        for entry in self._states.iterdir():
            owner = version_of_state_file(entry.name)
            if owner is None or owner in damaged or entry.name in referenced:
                continue  # not a state file of ours, or possibly still needed
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise io_error("remove unreferenced state file", entry, err) from err
            logger.warning("removed %s, which no commit record refers to", entry)
            removed = True
        if removed:
            fsync_dir(self._states)

    def _repair_head(self) -> None:
        """Point HEAD at a version whose state is complete and intact (full digest check)."""
        head_id = self._read_head_id()
        if head_id is not None:
            # A damaged HEAD record raises here: the message names the file to delete.
            record = self._record_if_present(head_id)
            if record is not None and self._verified(record):
                return
            what = "no commit record" if record is None else "no intact state file"
            logger.warning("HEAD names version %s, which has %s; falling back", head_id, what)
        target = self._newest_complete(verify=True)
        if target is None:
            if self._head_path.exists():
                try:
                    self._head_path.unlink()
                except OSError as err:
                    raise io_error("remove stale", self._head_path, err) from err
                fsync_dir(self._dir)
                logger.warning("no version with a complete state is left; removed HEAD")
            return
        logger.warning("resuming from version %s (round %d)", target.version_id,
                       target.commit.round)
        self._write_head(target.version_id)
