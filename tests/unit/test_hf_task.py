"""Task hf:PATH: local Hugging Face models on local text, LoRA adapters as the swarm's state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hfkit import DATA, STDLIB, hf_config, write_llama, write_tokenizer
from memswarm import fake_peer_id

from swarmtrain.dht.testing import sample_genesis
from swarmtrain.peer.app.cli import main
from swarmtrain.peer.node import PROTOCOL_VERSION, JoinError, check_genesis
from swarmtrain.peer.round.state import genesis_state
from swarmtrain.peer.training.tasks import TaskError, load_task
from swarmtrain.peer.training.tasks.stdlib_lm import is_heldout
from swarmtrain.peer.training.tasks.textdata import collect_text_files
from swarmtrain.peer.training.trainer import LocalTrainer, evaluate_loss, model_params


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama(tmp_path_factory.mktemp("llama"))


def test_a_model_built_from_its_config_is_the_same_on_every_build_and_leaves_the_global_rng(llama: Path) -> None:
    config = hf_config(llama)
    rng = torch.get_rng_state()
    a, b = genesis_state(load_task(config), config), genesis_state(load_task(config), config)
    assert torch.equal(rng, torch.get_rng_state())
    assert a.checksum == b.checksum and len(a.params) == 12
    other_seed = hf_config(llama, seed=1)
    assert genesis_state(load_task(other_seed), other_seed).checksum != a.checksum


def test_lora_shares_only_the_adapters_and_starts_as_the_base(llama: Path) -> None:
    config = hf_config(llama, lora=4)
    task = load_task(config, data=DATA)
    model = task.build_model()
    params = model_params(model)
    assert params and all("lora_" in name for name in params)
    full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in params.values()) < full / 5
    frozen = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)
    x, _ = task.heldout_batches(1, 0)[0]
    base = load_task(hf_config(llama), data=DATA).build_model()
    with torch.no_grad():  # B starts at zero: the adapted model computes what the base does
        assert torch.allclose(model(input_ids=x).logits, base(input_ids=x).logits)


def test_the_genesis_checksum_of_adapters_pins_the_base_model(llama: Path, tmp_path: Path) -> None:
    """Only the adapters are the state, yet another base must give another initial checksum."""
    config = hf_config(llama, lora=4)
    wider = write_llama(tmp_path / "other", hidden=32)
    model = load_task(hf_config(wider)).build_model()
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(wider)  # same config, different weights
    theirs = hf_config(wider, lora=4)
    assert genesis_state(load_task(config), config).checksum != genesis_state(load_task(theirs), theirs).checksum


def test_training_lowers_held_out_loss(llama: Path) -> None:
    config = hf_config(llama)
    task = load_task(config, data=DATA)
    trainer = LocalTrainer(task, config.train, stream_seed=0)
    heldout = task.heldout_batches(4, 1)
    before = evaluate_loss(task, task.build_model(), heldout)
    trainer.run(40)
    assert evaluate_loss(task, task.build_model(), heldout, params=trainer.params()) < before - 0.5


def test_each_peer_draws_its_own_stream_and_held_out_files_come_from_the_path_hash(llama: Path) -> None:
    task = load_task(hf_config(llama), data=DATA)
    a, b, a2 = (next(task.train_batches(s))[0] for s in (0, 1, 0))
    assert torch.equal(a, a2) and not torch.equal(a, b)
    assert a.shape == (4, task.config.model.context)
    files = collect_text_files(DATA)
    assert {f.relpath for f in files if is_heldout(f.relpath)}  # the split is by path, as stdlib-lm's
    assert all(f.relpath.startswith(("json/", "email/")) for f in files)


def test_one_file_holds_out_its_tail_and_jsonl_reads_the_text_field(llama: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    text = (STDLIB / "json" / "decoder.py").read_text()
    jsonl.write_text("\n".join(json.dumps({"text": text[i:i + 500], "id": i}) for i in range(0, len(text), 500)))
    task = load_task(hf_config(llama), data=[jsonl])
    x, y = task.heldout_batches(1, 0)[0]
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 256
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(TaskError, match="bad.jsonl:2"):
        _ = load_task(hf_config(llama), data=[bad]).corpus


def test_a_local_tokenizer_is_used_and_documents_are_separated_by_eos(tmp_path: Path) -> None:
    model = write_llama(tmp_path / "tok", vocab=300)
    write_tokenizer(model)
    task = load_task(hf_config(model), data=DATA)
    ids = torch.cat([task.corpus.train.reshape(-1), task.corpus.heldout.reshape(-1)])
    assert int(ids.max()) >= 256 and (ids == task.tokenizer.eos_token_id).any()  # type: ignore[attr-defined]
    with pytest.raises(TaskError, match="300 tokens, more than the model's vocab_size=256"):
        load_task(hf_config(write_tokenizer(write_llama(tmp_path / "small"))), data=DATA)


def test_missing_or_unusable_inputs_are_one_line_errors_naming_them(llama: Path, tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="no-such-dir: no such file or directory"):
        load_task(hf_config(llama), data=[tmp_path / "no-such-dir"])
    with pytest.raises(TaskError, match="no such model directory"):
        load_task(hf_config(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="config.json is missing"):
        load_task(hf_config(tmp_path / "empty"))
    with pytest.raises(TaskError, match="vocabulary of >= 256"):
        load_task(hf_config(write_llama(tmp_path / "small", vocab=100)))
    with pytest.raises(TaskError, match="name it with --data"):
        _ = load_task(hf_config(llama)).corpus
    with pytest.raises(TaskError, match="--lora is for hf: tasks"):
        load_task(hf_config(llama, lora=4).replace(task="stdlib-lm"))


def test_join_refuses_hf_without_data_and_data_without_hf(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["join", "--task", "hf:/nowhere", "--rounds", "1"]) == 2
    assert "add --data" in capsys.readouterr().err
    assert main(["join", "--data", "x.txt", "--rounds", "1"]) == 2
    assert "--task hf:PATH" in capsys.readouterr().err
    assert main(["join", "--task", "hf:/nowhere", "--data", "/no/such.txt", "--rounds", "1"]) == 2
    assert "--data /no/such.txt: no such file or directory" in capsys.readouterr().err


def test_a_joiner_names_its_own_model_directory_and_runs_from_it(llama: Path) -> None:
    theirs = hf_config(llama, lora=4).replace(task="hf:/their/machine/model")
    genesis = sample_genesis(fake_peer_id("creator"), protocol_version=PROTOCOL_VERSION,
                             task=theirs.task, config=theirs.to_dict())
    with pytest.raises(JoinError, match="--task hf:PATH"):
        check_genesis(genesis, insisted=None)
    mine = hf_config(llama, lora=4)
    assert check_genesis(genesis, insisted=mine) == mine
    with pytest.raises(JoinError, match="lora_rank: yours 8, swarm 4"):
        check_genesis(genesis, insisted=hf_config(llama, lora=8))


def test_simulate_trains_an_hf_model_with_lora(llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "--task", f"hf:{llama}", "--data", *map(str, DATA), "--preset", "smoke", "--lora", "4",
            "--peers", "2", "--rounds", "1", "--inner-steps", "5", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["accepted"] == 2


def test_a_joiner_with_another_model_directory_is_told_so(llama: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from swarmtrain.peer.node import Node

    config = hf_config(llama, lora=4)
    swarms = genesis_state(load_task(config), config).checksum.hex()
    other = write_llama(tmp_path / "other", hidden=64)
    mine = hf_config(other, lora=4)
    joiner = SimpleNamespace(store=object(), task=load_task(mine), config=mine,
                             genesis=SimpleNamespace(initial_checksum=swarms))
    with pytest.raises(JoinError, match=rf"your model directory differs from the swarm's \(checksum \w+ vs {swarms[:12]}\)"):
        Node._initial_state(joiner)  # type: ignore[arg-type]


def test_a_gpt2_style_model_with_transposed_linears_takes_lora_too(tmp_path: Path) -> None:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256, n_positions=128,
               bos_token_id=0, eos_token_id=0).save_pretrained(tmp_path)
    task = load_task(hf_config(tmp_path, lora=4), data=DATA)
    trainer = LocalTrainer(task, task.config.train, stream_seed=0)
    before = trainer.params()
    report = trainer.run(3)
    assert report.steps == 3 and sorted(before) == sorted(trainer.params())
    assert any(not torch.equal(before[n], t) for n, t in trainer.params().items())
