"""Tiny Hugging Face model directories for tests: configs written here, nothing downloaded."""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path

from swarmtrain.peer.config import SwarmConfig, preset

# Text every machine that runs the tests has: a few standard-library packages.
STDLIB = Path(sysconfig.get_paths()["stdlib"])
DATA = (STDLIB / "json", STDLIB / "email")


def write_llama(path: Path, *, vocab: int = 256, hidden: int = 32) -> Path:
    """config.json of a one-layer Llama (no weights, no tokenizer: a byte-level model)."""
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=128,
                bos_token_id=0, eos_token_id=0).save_pretrained(path)
    return path


def write_tokenizer(path: Path, vocab: int = 300) -> Path:
    """A byte-level BPE tokenizer trained here on one stdlib file, saved beside the config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([(STDLIB / "json" / "decoder.py").read_text()], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(path)
    return path


def hf_config(model_dir: Path, *, lora: int = 0, seed: int = 0) -> SwarmConfig:
    config = preset("smoke").replace(task=f"hf:{model_dir}", seed=seed)
    return config.replace(train=dataclasses.replace(config.train, lora_rank=lora, batch_size=4))
