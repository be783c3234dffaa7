"""swarmtrain export --format hf/peft: directories transformers and peft load and generate with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hfkit import DATA, hf_config, write_llama
from memswarm import fake_peer_id

from swarmtrain.dht.testing import sample_genesis
from swarmtrain.peer.app.cli import main
from swarmtrain.peer.app.export import ExportError, export_version
from swarmtrain.peer.config import SwarmConfig
from swarmtrain.peer.node import PROTOCOL_VERSION
from swarmtrain.peer.round.merge import full_state
from swarmtrain.peer.round.state import ModelState, genesis_state
from swarmtrain.peer.store.versions import VersionStore
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.peer.training.trainer import LocalTrainer, load_model_params
from swarmtrain.protocol import state_checksum, version_id


def _peer_data_dir(root: Path, config: SwarmConfig) -> tuple[Path, str, str, dict[str, torch.Tensor]]:
    """A data dir as a peer leaves it: genesis.json, V0 and one trained child version."""
    task = load_task(config, data=DATA)
    genesis = genesis_state(task, config)
    record = sample_genesis(fake_peer_id("creator"), protocol_version=PROTOCOL_VERSION, swarm="hf-swarm",
                            task=config.task, config=config.to_dict(), initial_checksum=genesis.checksum.hex())
    root.mkdir(parents=True)
    (root / "genesis.json").write_text(json.dumps({"digest": record.digest(), "record": record.to_wire()}))
    trainer = LocalTrainer(task, config.train, stream_seed=0)
    trainer.run(10)
    params = trainer.params()
    child = ModelState(params=params, outer=genesis.outer, version=version_id(genesis.version, [bytes(32)]),
                       round=2, checksum=state_checksum(full_state(params, genesis.outer)))
    with VersionStore(root / "versions") as store:
        genesis.save(store, genesis.commit_for(parent=None, produced_in=0))
        child.save(store, child.commit_for(parent=genesis.version, produced_in=1))
    return root, genesis.version.hex(), child.version.hex(), params


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama(tmp_path_factory.mktemp("llama"))


def _export(data_dir: Path, version: str, out: Path, fmt: str, model_dir: Path | None = None) -> dict[str, object]:
    with VersionStore(data_dir / "versions", read_only=True) as store:
        return export_version(store, data_dir, version[:10], out, fmt=fmt, model_dir=model_dir).metadata


def _swarm_logits(config: SwarmConfig, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = load_task(config).build_model()
    load_model_params(model, params)
    with torch.no_grad():
        return model(input_ids=x).logits


def test_a_lora_swarm_exports_a_merged_model_that_from_pretrained_loads_and_generates(
        llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    config = hf_config(llama, lora=4)
    data_dir, v0, v1, params = _peer_data_dir(tmp_path / "peer", config)
    meta = _export(data_dir, v1, tmp_path / "out", "hf")
    assert meta["swarm"] == "hf-swarm" and meta["version"] == v1 and meta["parent"] == v0
    assert json.loads((tmp_path / "out" / "swarmtrain.json").read_text())["tokenizer"] == "bytes"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    x = torch.tensor([list(b"def main():")])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, _swarm_logits(config, params, x), atol=1e-5)
    out = loaded.generate(x, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, x.shape[1] + 5)


def test_a_lora_swarm_exports_a_peft_adapter(llama: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    config = hf_config(llama, lora=4)
    data_dir, _, v1, params = _peer_data_dir(tmp_path / "peer", config)
    _export(data_dir, v1, tmp_path / "adapter", "peft")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    base = load_task(hf_config(llama)).build_model()  # no weights in llama/: swarmtrain builds the base
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter")
    x = torch.tensor([list(b"import os")])
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=x).logits, _swarm_logits(config, params, x), atol=1e-5)


def test_a_full_fine_tune_exports_its_weights_and_the_default_format_is_still_safetensors(
        llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM

    config = hf_config(llama)
    data_dir, _, v1, params = _peer_data_dir(tmp_path / "peer", config)
    assert main(["export", v1[:8], str(tmp_path / "hf"), "--data-dir", str(data_dir), "--format", "hf"]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert all(torch.equal(p, params[n]) for n, p in loaded.named_parameters())
    assert main(["export", v1[:8], str(tmp_path / "m.safetensors"), "--data-dir", str(data_dir)]) == 0
    assert (tmp_path / "m.safetensors").is_file()
    capsys.readouterr()
    assert main(["export", v1[:8], str(tmp_path / "p"), "--data-dir", str(data_dir), "--format", "peft"]) == 1
    assert "--format peft writes LoRA adapters" in capsys.readouterr().err


def test_export_refuses_another_model_directory_a_used_output_and_a_non_hf_swarm(
        llama: Path, tmp_path: Path) -> None:
    config = hf_config(llama, lora=4)
    data_dir, _, v1, _ = _peer_data_dir(tmp_path / "peer", config)
    other = write_llama(tmp_path / "other", hidden=64)
    with pytest.raises(ExportError, match="your model directory differs from the swarm's"):
        _export(data_dir, v1, tmp_path / "o1", "hf", model_dir=other)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ExportError, match="not an empty directory"):
        _export(data_dir, v1, tmp_path / "used", "hf")
    genesis = json.loads((data_dir / "genesis.json").read_text())
    genesis["record"]["config"]["task"] = genesis["record"]["task"] = "stdlib-lm"
    (data_dir / "genesis.json").write_text(json.dumps(genesis))
    with pytest.raises(ExportError, match="use --format safetensors"):
        _export(data_dir, v1, tmp_path / "o2", "hf")
