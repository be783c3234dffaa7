"""Two real peers fine-tune a tiny Hugging Face model with LoRA, and the export loads.

Each peer has its own model directory (the path differs, as it does between machines):
a's holds the weights, b's only the config, and b fetches the weights from a
(``--fetch-base``); the genesis' initial checksum proves them the same.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from swarmkit import SMOKE, Swarm, by_round

pytestmark = [pytest.mark.integration]

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _pretrained_tiny_llama(path: Path, data: list[str]) -> Path:
    """A one-layer byte-level Llama, trained here for a few seconds and saved with its
    weights: LoRA adapts a base that has learned something, as it does in real use (on a
    random base the adapters' small gains drown in the vote's held-out noise)."""
    import dataclasses

    from transformers import LlamaConfig

    from swarmtrain.peer.config import preset
    from swarmtrain.peer.training.tasks import load_task
    from swarmtrain.peer.training.trainer import LocalTrainer

    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=256, max_position_embeddings=128,
                bos_token_id=0, eos_token_id=0).save_pretrained(path)
    config = preset("smoke").replace(task=f"hf:{path}")
    config = config.replace(train=dataclasses.replace(config.train, batch_size=4))
    trainer = LocalTrainer(load_task(config, data=data), config.train, stream_seed=12345)
    trainer.run(150)
    trainer.model.save_pretrained(path)
    return path


@pytest.mark.timeout(240)
def test_two_peers_train_lora_adapters_agree_and_the_export_generates(tmp_path: Path) -> None:
    """a trains from round 0 on; b, started once a is up, joins at round 0 or (a slow start
    on a busy machine) catches up on the adapters a serves, plays one round with a and
    leaves; a stops once it has played 2 rounds and b is gone. Every version b holds is
    a's too, with the same checksum, and b's round checked both peers' updates."""
    import torch
    from transformers import AutoModelForCausalLM

    from swarmtrain.peer.app.export import export_version
    from swarmtrain.peer.store.versions import VersionStore

    data = [str(STDLIB / "json"), str(STDLIB / "email")]
    mine = _pretrained_tiny_llama(tmp_path / "models-a" / "llama", data)
    # b has the model's config and not its weights: it fetches them from a (--fetch-base).
    theirs = tmp_path / "models-b" / "llama"
    theirs.mkdir(parents=True)
    shutil.copy(mine / "config.json", theirs / "config.json")
    common = [*SMOKE, "--lora", "4", "--data", *data]
    swarm = Swarm(tmp_path, "hf-lora")
    try:
        swarm.start("a", "--task", f"hf:{mine}", *common, "--start-delay", "5")
        address = swarm.peers["a"].address(timeout=60)
        swarm.start("b", "--task", f"hf:{theirs}", *common, "--rounds", "1", "--initial-peers", address,
                    "--fetch-base")
        swarm.wait("b", timeout=100)
        swarm.wait_for_line("a", "round 1:", timeout=30)
    finally:
        swarm.stop_all()

    rounds_a, rounds_b = by_round(tmp_path / "a"), by_round(tmp_path / "b")
    log_b = swarm.peers["b"].log_text()[-2000:]
    assert rounds_b and set(rounds_b) <= set(rounds_a), log_b
    for r, commit in rounds_b.items():
        assert (rounds_a[r].version_id, rounds_a[r].state_checksum) == (commit.version_id, commit.state_checksum)
    final = rounds_b[max(rounds_b)]  # the round b played (the ones before it, b caught up on)
    assert len(final.contributions) == 2 and final.accepted, (final, log_b)
    assert "KiB" in log_b and "sent 0.0 KiB" not in log_b  # adapters went over the wire
    full_log_b = swarm.peers["b"].log_text()
    assert "base weights: fetched" in full_log_b and "verified against the genesis" in full_log_b, full_log_b[:2000]
    fetched = tmp_path / "b" / "base-model"
    assert (fetched / "model.safetensors").read_bytes() == (mine / "model.safetensors").read_bytes()

    out = tmp_path / "export"
    with VersionStore(tmp_path / "b" / "versions", read_only=True) as store:
        meta = export_version(store, tmp_path / "b", final.version_id[:12], out, fmt="hf", model_dir=fetched).metadata
    assert (meta["swarm"], meta["version"], meta["parent"]) == ("hf-lora", final.version_id, final.parent_id)
    assert json.loads((out / "swarmtrain.json").read_text())["version"] == final.version_id
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    prompt = torch.tensor([list(b"import json\n")])
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, prompt.shape[1] + 8)
