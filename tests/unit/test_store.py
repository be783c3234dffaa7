"""Version store: round trips, history, prefixes, pruning, export, and crash safety."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import msgpack
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from swarmtrain.peer.store import files as store_files
from swarmtrain.peer.store.versions import (
    CommitFormatError,
    Contribution,
    StoreError,
    VersionCommit,
    VersionStore,
)


def vid(n: int, prefix: str = "") -> str:
    """A 64-hex version id, optionally starting with ``prefix``."""
    tail = hashlib.blake2b(str(n).encode(), digest_size=32).hexdigest()
    return (prefix + tail)[:64]


def make_commit(n: int, *, parent: str | None = None, round_: int | None = None,
                version_id: str | None = None, checksum: str = "ab" * 32) -> VersionCommit:
    contributions = (
        Contribution(peer_id="12D3KooWpeerA", digest="11" * 32, samples=64, accepted=True,
                     votes_for=2, votes_against=0, loss_delta=-0.25, reason="accepted"),
        Contribution(peer_id="12D3KooWpeerB", digest="22" * 32, samples=64, accepted=False,
                     votes_for=0, votes_against=2, loss_delta=float("nan"),
                     reason="majority rejected"),
        Contribution(peer_id="12D3KooWpeerC", digest="33" * 32, samples=0, accepted=False,
                     votes_for=0, votes_against=0, loss_delta=None, reason="not downloaded"),
    )
    return VersionCommit(
        version_id=version_id or vid(n), parent_id=parent,
        round=n if round_ is None else round_, created=1_700_000_000.0 + n,
        contributions=contributions if parent else (), validation_loss=3.5 - n / 10,
        state_checksum=checksum,
    )


def make_state(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    params = {
        "embed.weight": torch.randn(8, 4, generator=g),
        "block.0.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "steps": torch.tensor([seed, -1], dtype=torch.int64),
        "odd": torch.tensor([float("nan"), -0.0, float("inf"), 1e-45]),
    }
    extra = {"momentum/embed.weight": torch.randn(8, 4, generator=g)}
    return params, extra


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-exact equality (NaN payloads and -0.0 included)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.contiguous().view(torch.uint8).tolist() != y.contiguous().view(torch.uint8).tolist():
            return False
    return True


def fill(store: VersionStore, count: int) -> list[VersionCommit]:
    commits, parent = [], None
    for n in range(count):
        commit = make_commit(n, parent=parent)
        store.save(commit, *make_state(n))
        commits.append(commit)
        parent = commit.version_id
    return commits


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# -- commit records -----------------------------------------------------------------


def test_commit_dict_round_trip_json_and_msgpack() -> None:
    commit = make_commit(3, parent=vid(2))
    via_json = VersionCommit.from_dict(json.loads(json.dumps(commit.to_dict())))
    via_msgpack = VersionCommit.from_dict(msgpack.unpackb(msgpack.packb(commit.to_dict())))
    for back in (via_json, via_msgpack):
        assert back.to_dict().keys() == commit.to_dict().keys()
        assert back.version_id == commit.version_id and back.parent_id == commit.parent_id
        assert [c.reason for c in back.rejected] == ["majority rejected", "not downloaded"]
        assert back.accepted == commit.accepted  # NaN only sits in a rejected one
    assert make_commit(0).is_genesis


@pytest.mark.parametrize("field, value", [
    ("version_id", "XYZ"), ("version_id", "../etc"), ("parent_id", 5), ("round", -1),
    ("round", True), ("created", "now"), ("contributions", "x"), ("state_checksum", ""),
    ("validation_loss", "low"),
])
def test_commit_from_dict_rejects_wrong_types(field: str, value: object) -> None:
    data = make_commit(1, parent=vid(0)).to_dict()
    data[field] = value
    with pytest.raises(CommitFormatError):
        VersionCommit.from_dict(data)


def test_contribution_from_dict_rejects_missing_and_wrong_fields() -> None:
    good = make_commit(1, parent=vid(0)).contributions[0].to_dict()
    with pytest.raises(CommitFormatError, match="missing"):
        Contribution.from_dict({k: v for k, v in good.items() if k != "samples"})
    with pytest.raises(CommitFormatError, match="accepted"):
        Contribution.from_dict({**good, "accepted": 1})


# -- save, load, history, head --------------------------------------------------------


def test_save_load_round_trip_is_bit_exact(tmp_path: Path) -> None:
    params, extra = make_state(7)
    params["tied"] = params["embed.weight"]  # one storage under two names
    commit = make_commit(0)
    with VersionStore(tmp_path) as store:
        store.save(commit, params, extra)
        loaded_params, loaded_extra = store.load(commit.version_id)
        assert same(loaded_params, params) and same(loaded_extra, extra)
        assert store.has_state(commit.version_id)
        assert store.commit(commit.version_id[:8]) == store.head()


def test_history_is_oldest_first_and_head_is_latest_saved(tmp_path: Path) -> None:
    with VersionStore(tmp_path, keep=10) as store:
        assert store.history() == [] and store.head() is None
        commits = fill(store, 3)
        assert [c.version_id for c in store.history()] == [c.version_id for c in commits]
        assert store.head().version_id == commits[-1].version_id
        # A version stored without make_head leaves HEAD alone but joins the history.
        old = make_commit(9, round_=0, version_id=vid(99))
        store.save(old, *make_state(9), make_head=False)
        assert store.head().version_id == commits[-1].version_id
        assert [c.version_id for c in store.history()][:2] == [vid(0), vid(99)]


def test_resolve_unique_ambiguous_unknown(tmp_path: Path) -> None:
    with VersionStore(tmp_path) as store:
        for n, prefix in enumerate(["abc1", "abc2", "def"]):
            store.save(make_commit(n, version_id=vid(n, prefix)), *make_state(n))
        assert store.resolve("abc1") == vid(0, "abc1")
        assert store.resolve("DEF") == vid(2, "def")
        assert store.resolve(vid(1, "abc2")) == vid(1, "abc2")
        with pytest.raises(StoreError, match="ambiguous") as err:
            store.resolve("abc")
        assert vid(0, "abc1") in str(err.value) and vid(1, "abc2") in str(err.value)
        with pytest.raises(StoreError, match="unknown version"):
            store.resolve("0123")
        with pytest.raises(StoreError, match="not a hex"):
            store.resolve("../x")
        assert not store.has_state("0123")
        params, _ = store.load("abc2")
        assert same(params, make_state(1)[0])


def test_pruning_keeps_every_commit_and_the_head(tmp_path: Path) -> None:
    with VersionStore(tmp_path, keep=2) as store:
        commits = fill(store, 5)
        ids = [c.version_id for c in commits]
        assert [c.version_id for c in store.history()] == ids
        assert [store.has_state(i) for i in ids] == [False, False, False, True, True]
        with pytest.raises(StoreError, match="no state on this peer"):
            store.load(ids[0])
        # Move HEAD back by saving an old round as head: it keeps its state while
        # newer ones arrive (make_head=False) and push the rest out.
        store.save(make_commit(0, version_id=ids[0]), *make_state(0))
        for n in (5, 6):
            store.save(make_commit(n, parent=ids[-1]), *make_state(n), make_head=False)
        assert store.head().version_id == ids[0]
        assert store.has_state(ids[0]) and not store.has_state(ids[4])
        assert len(list((tmp_path / "states").iterdir())) == 3
        assert len(store.history()) == 7


def test_resaving_a_version_replaces_its_state(tmp_path: Path) -> None:
    with VersionStore(tmp_path) as store:
        commit = make_commit(0)
        store.save(commit, *make_state(0))
        fixed = make_commit(0, checksum="cd" * 32)
        store.save(fixed, *make_state(1))
        assert same(store.load(commit.version_id)[0], make_state(1)[0])
        assert store.head().state_checksum == "cd" * 32
        assert len(list((tmp_path / "states").iterdir())) == 1


# -- export and raw bytes ---------------------------------------------------------------


def test_export_writes_params_with_metadata(tmp_path: Path) -> None:
    with VersionStore(tmp_path / "data") as store:
        commits = fill(store, 2)
        out = store.export(commits[1].version_id[:10], tmp_path / "model.safetensors")
    assert same(load_file(out), make_state(1)[0])
    with safe_open(out, framework="pt") as f:
        meta = f.metadata()
    assert meta["swarmtrain.version_id"] == commits[1].version_id
    assert meta["swarmtrain.parent_id"] == commits[0].version_id
    assert meta["swarmtrain.round"] == "1"
    assert temp_files(tmp_path) == []


def test_export_into_missing_directory_says_so(tmp_path: Path) -> None:
    with VersionStore(tmp_path / "data") as store:
        fill(store, 1)
        with pytest.raises(StoreError, match="does not exist"):
            store.export(vid(0), tmp_path / "nope" / "m.safetensors")


def test_state_bytes_move_a_version_to_another_store(tmp_path: Path) -> None:
    with VersionStore(tmp_path / "a") as a, VersionStore(tmp_path / "b") as b:
        commit = fill(a, 1)[0]
        data = a.state_bytes(commit.version_id)
        b.save_from_bytes(commit, data, checksum=lambda p, e: commit.state_checksum)
        assert b.state_bytes(commit.version_id) == data
        assert same(b.load(commit.version_id)[1], make_state(0)[1])
        with pytest.raises(StoreError, match="checksum"):
            b.save_from_bytes(make_commit(1), data, checksum=lambda p, e: "00" * 32)


@pytest.mark.parametrize("data", [
    b"", b"garbage", b"\xff" * 64, st_save({"weight": torch.zeros(2)}),
    st_save({"extra/m": torch.zeros(2)}),
])
def test_save_from_bytes_rejects_bad_state(tmp_path: Path, data: bytes) -> None:
    with VersionStore(tmp_path) as store:
        with pytest.raises(StoreError, match="state from"):
            store.save_from_bytes(make_commit(0), data)
        assert store.history() == [] and list((tmp_path / "states").iterdir()) == []


# -- crash safety -------------------------------------------------------------------------


def test_leftover_temp_and_orphan_files_are_removed_at_start(tmp_path: Path) -> None:
    with VersionStore(tmp_path) as store:
        fill(store, 1)
    tmp = ".7.0badcafe.tmp"  # what a writer with pid 7 leaves when killed mid-write
    leftovers = [tmp_path / "states" / f".{vid(1)}.0123456789abcdef.safetensors{tmp}",
                 tmp_path / "commits" / f".{vid(1)}.json{tmp}", tmp_path / f".HEAD{tmp}"]
    user_file = tmp_path / ".notes.tmp"  # not ours: must survive
    orphan = tmp_path / "states" / f"{vid(1)}.0123456789abcdef.safetensors"
    for path in [*leftovers, orphan, user_file]:
        path.write_bytes(b"half")
    with VersionStore(tmp_path) as store:
        assert temp_files(tmp_path) == [user_file] and not orphan.exists()
        assert store.head().version_id == vid(0)


def _full_disk_after(first_bytes: int) -> object:
    """A write that stores ``first_bytes`` and then fails like a full disk."""
    def write(fd: int, view: memoryview) -> int:
        if os.fstat(fd).st_size >= first_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, view[:first_bytes])
    return write


def test_disk_full_during_state_write_leaves_previous_versions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with VersionStore(tmp_path) as store:
        commits = fill(store, 2)
        before = sorted(p.name for p in tmp_path.rglob("*"))
        monkeypatch.setattr(store_files, "_write_chunk", _full_disk_after(100))
        with pytest.raises(StoreError, match="ENOSPC") as err:
            store.save(make_commit(2, parent=commits[1].version_id), *make_state(2))
        assert "free disk space" in str(err.value) and str(tmp_path / "states") in str(err.value)
        monkeypatch.undo()
        assert sorted(p.name for p in tmp_path.rglob("*")) == before
        assert store.head().version_id == commits[1].version_id
        assert same(store.load(commits[1].version_id)[0], make_state(1)[0])


def test_disk_full_during_record_write_removes_the_new_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    with VersionStore(tmp_path) as store:
        commits = fill(store, 1)
        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(StoreError, match="commits"):
            store.save(make_commit(1, parent=commits[0].version_id), *make_state(1))
        monkeypatch.undo()
        assert temp_files(tmp_path) == []
        assert len(list((tmp_path / "states").iterdir())) == 1
        assert [c.version_id for c in store.history()] == [commits[0].version_id]
    with VersionStore(tmp_path) as store:
        assert store.head().version_id == commits[0].version_id


def test_head_with_missing_state_falls_back(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with VersionStore(tmp_path) as store:
        commits = fill(store, 3)
    for path in (tmp_path / "states").glob(commits[2].version_id + ".*"):
        path.unlink()
    with caplog.at_level(logging.WARNING), VersionStore(tmp_path) as store:
        assert store.head().version_id == commits[1].version_id
        assert (tmp_path / "HEAD").read_text().strip() == commits[1].version_id
        assert len(store.history()) == 3  # the lost version's commit is still listed
    assert "falling back" in caplog.text


def test_head_with_damaged_state_falls_back_and_load_refuses_it(tmp_path: Path) -> None:
    with VersionStore(tmp_path) as store:
        commits = fill(store, 2)
    (state,) = (tmp_path / "states").glob(commits[1].version_id + ".*")
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the digest can tell
    state.write_bytes(bytes(data))
    with VersionStore(tmp_path) as store:
        assert store.head().version_id == commits[0].version_id
        with pytest.raises(StoreError, match="damaged"):
            store.load(commits[1].version_id)


def test_head_naming_an_unknown_version_falls_back(tmp_path: Path) -> None:
    with VersionStore(tmp_path) as store:
        commits = fill(store, 2)
    (tmp_path / "HEAD").write_text(vid(42) + "\n")
    with VersionStore(tmp_path) as store:
        assert store.head().version_id == commits[1].version_id


def test_damaged_records_skip_in_history_and_raise_for_head(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with VersionStore(tmp_path) as store:
        commits = fill(store, 3)
        older = tmp_path / "commits" / (commits[0].version_id + ".json")
        older.write_text(older.read_text()[:40])  # truncated JSON
        with caplog.at_level(logging.WARNING):
            listed = [c.version_id for c in store.history()]
        assert listed == [c.version_id for c in commits[1:]]
        assert str(older) in caplog.text
        head_file = tmp_path / "commits" / (commits[2].version_id + ".json")
        doc = json.loads(head_file.read_text())
        doc["commit"]["round"] = "two"  # wrong type
        head_file.write_text(json.dumps(doc))
        with pytest.raises(StoreError, match="damaged") as err:
            store.head()
        assert str(head_file) in str(err.value)


def test_one_writer_per_data_dir_and_read_only_beside_it(tmp_path: Path) -> None:
    with VersionStore(tmp_path) as store:
        commits = fill(store, 1)
        with pytest.raises(StoreError, match="in use by another"):
            VersionStore(tmp_path)
        reader = VersionStore(tmp_path, read_only=True)
        assert reader.head() == commits[0]
        with pytest.raises(StoreError, match="read-only"):
            reader.save(make_commit(1), *make_state(1))
    with pytest.raises(StoreError, match="no swarmtrain version store"):
        VersionStore(tmp_path / "missing", read_only=True)
