"""--fetch-base: base weights from the swarm's peers, verified, bad holders skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from swarmtrain.peer.basemodel import WEIGHTS_FILE, BaseFetchError, fetch_base, serve_base
from swarmtrain.peer.exchange.errors import BlobNotFound

GOOD = save({"w": torch.arange(6, dtype=torch.float32)})
OTHER = save({"w": torch.zeros(6)})
KEY = "ab" * 32


class _Peers:
    """Holders answering "base" requests with the bytes given (None: not held)."""

    def __init__(self, served: dict[str, bytes | None]) -> None:
        self.served = served
        self.asked: list[str] = []
        self.offered: dict[tuple[str, str], object] = {}

    def fetch(self, peer: str, kind: str, key: str, *, max_size: int, timeout: float) -> bytes:
        assert (kind, key) == ("base", KEY)
        self.asked.append(peer)
        data = self.served[peer]
        if data is None:
            raise BlobNotFound(f"{peer} does not hold it", peer_id=peer)
        return data

    def serve_provider(self, kind: str, key: str, provider: object, *, pinned: bool = False) -> None:
        assert pinned, "base weights must be pinned: served for the peer's whole life"
        self.offered[(kind, key)] = provider


def _verify(directory: Path) -> str | None:
    return None if torch.equal(load_file(directory / WEIGHTS_FILE)["w"], torch.arange(6.0)) else "other weights"


def _model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_bad_holders_are_skipped_until_one_serves_weights_that_verify(tmp_path: Path) -> None:
    peers = _Peers({"Qmgone": None, "Qmjunk": b"not safetensors", "Qmother": OTHER, "Qmgood": GOOD})
    lines: list[str] = []
    got = fetch_base(peers, ["Qmgone", "Qmjunk", "Qmother", "Qmgood"], KEY, _model_dir(tmp_path),  # type: ignore[arg-type]
                     tmp_path / "data", _verify, lines.append)
    assert got == tmp_path / "data" / "base-model" and (got / "config.json").is_file()
    assert (got / WEIGHTS_FILE).read_bytes() == GOOD
    assert peers.asked == ["Qmgone", "Qmjunk", "Qmother", "Qmgood"]
    assert any("fetched" in line and "verified against the genesis" in line for line in lines)
    # A restart reuses what it fetched, asking nobody.
    again = _Peers({})
    assert fetch_base(again, [], KEY, tmp_path / "model", tmp_path / "data", _verify,  # type: ignore[arg-type]
                      lines.append) == got and again.asked == []


def test_no_holder_with_matching_weights_is_one_error_that_names_the_fix(tmp_path: Path) -> None:
    peers = _Peers({"Qmother": OTHER})
    with pytest.raises(BaseFetchError, match="from any of 1 peer.*other weights.*model.safetensors"):
        fetch_base(peers, ["Qmother"], KEY, _model_dir(tmp_path), tmp_path / "data", _verify,  # type: ignore[arg-type]
                   lambda _: None)
    assert not (tmp_path / "data" / "base-model" / WEIGHTS_FILE).exists()  # nothing unverified is kept


def test_a_peer_serves_its_single_weights_file_and_nothing_without_one(tmp_path: Path) -> None:
    model = _model_dir(tmp_path)
    peers = _Peers({})
    assert not serve_base(peers, model, KEY)  # type: ignore[arg-type]
    (model / WEIGHTS_FILE).write_bytes(GOOD)
    assert serve_base(peers, model, KEY)  # type: ignore[arg-type]
    assert peers.offered[("base", KEY)]() == GOOD  # type: ignore[operator]


class _Holder:
    """One peer serving what serve_base offered, as the blob server would."""

    def __init__(self, offered: dict[tuple[str, str], object]) -> None:
        self.offered = offered
        self.keys: list[str] = []

    def fetch(self, peer: str, kind: str, key: str, *, max_size: int, timeout: float) -> bytes:
        self.keys.append(key)
        if (kind, key) not in self.offered:
            raise BlobNotFound(f"{peer} does not hold {key[:12]}", peer_id=peer)
        data = self.offered[(kind, key)]()  # type: ignore[operator]
        assert len(data) <= max_size
        return data


def test_a_sharded_checkpoint_is_served_and_fetched_shard_by_shard(tmp_path: Path) -> None:
    from hfkit import write_llama
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from swarmtrain.peer.basemodel import INDEX_FILE, shard_key

    src = write_llama(tmp_path / "holder")
    torch.manual_seed(0)
    original = LlamaForCausalLM(LlamaConfig.from_pretrained(src))
    original.save_pretrained(src, max_shard_size="20KB", safe_serialization=True)
    shards = sorted(p.name for p in src.glob("model-*.safetensors"))
    assert (src / INDEX_FILE).is_file() and len(shards) > 1 and not (src / WEIGHTS_FILE).exists()
    peers = _Peers({})
    assert serve_base(peers, src, KEY)  # type: ignore[arg-type]
    assert set(peers.offered) == {("base", KEY)} | {("base", shard_key(KEY, n)) for n in shards}

    def verify(directory: Path) -> str | None:
        got = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).state_dict()
        same = all(torch.equal(got[k], v) for k, v in original.state_dict().items())
        return None if same else "other weights"

    holder, lines = _Holder(peers.offered), []  # type: ignore[var-annotated]
    joiner = write_llama(tmp_path / "joiner")  # config only, as a joiner with --fetch-base has
    got = fetch_base(holder, ["Qmholder"], KEY, joiner, tmp_path / "data", verify, lines.append)  # type: ignore[arg-type]
    assert sorted(p.name for p in got.glob("model-*.safetensors")) == shards and (got / INDEX_FILE).is_file()
    assert len(holder.keys) == 1 + len(shards)
    assert any("verified against the genesis" in line for line in lines)


@pytest.mark.parametrize("index, why", [
    (b'{"weight_map": {"w": "../../outside.safetensors"}}', "not a plain .safetensors file name"),
    (b'{"weight_map": {"w": "model.bin"}}', "not a plain .safetensors file name"),
    (b'{"weight_map": {}}', "not a non-empty object"),
    (b'{"weight_map": {"w": 3}}', "not a plain .safetensors file name"),
    (b"\xff\xfe", "not a safetensors index"),
])
def test_a_hostile_index_writes_nothing_and_is_named(tmp_path: Path, index: bytes, why: str) -> None:
    peers = _Peers({"Qmbad": index})
    with pytest.raises(BaseFetchError, match=why):
        fetch_base(peers, ["Qmbad"], KEY, _model_dir(tmp_path), tmp_path / "data", _verify,  # type: ignore[arg-type]
                   lambda _: None)
    assert sorted(p.name for p in (tmp_path / "data" / "base-model").iterdir()) == ["config.json"]
    assert not (tmp_path / "outside.safetensors").exists() and peers.asked == ["Qmbad"]
