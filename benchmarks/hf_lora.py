"""Bytes per round of LoRA against full fine-tuning of the same Hugging Face model.

A swarm round sends one update payload per peer; this measures those payloads with the
simulator (every step a networked peer takes, payloads as bytes in memory) for tiny
Llama models built from configs written here (byte-level, no download), trained on the
standard library's json and email packages. Each model runs full fine-tuning and
``--lora RANK``, with the presets' dense fp32 codec and with the compressing SparseLoCo
codec (top-k 1 %, 2 bits). The bases are random, so LoRA's losses say little here: the
bytes are the result.

    python benchmarks/hf_lora.py                       # writes benchmarks/results/hf_lora.json
    python benchmarks/hf_lora.py --rank 8 --rounds 2 --steps 20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from swarmtrain.peer.config import CodecConfig, OuterConfig, SwarmConfig, preset
from swarmtrain.peer.round.simulate import Simulation
from swarmtrain.peer.training.tasks import load_task

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DATA = (STDLIB / "json", STDLIB / "email")
MODELS = {"llama-d64-l2": (64, 2), "llama-d256-l4": (256, 4)}
CODECS = {"dense-fp32": None, "sparseloco-1%-2bit": (CodecConfig(), OuterConfig())}


def write_model(path: Path, hidden: int, layers: int) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=256, max_position_embeddings=128,
                bos_token_id=0, eos_token_id=0).save_pretrained(path)
    return path


def run(model_dir: Path, rank: int, codec: tuple[CodecConfig, OuterConfig] | None, rounds: int,
        steps: int) -> dict[str, Any]:
    config: SwarmConfig = preset("smoke").replace(task=f"hf:{model_dir}")
    config = config.replace(train=dataclasses.replace(config.train, lora_rank=rank, inner_steps=steps))
    if codec is not None:
        config = config.replace(codec=codec[0], outer=codec[1])
    sim = Simulation(config, peers=2, task=load_task(config, data=DATA))
    shared = sum(t.numel() for t in sim.params.values())
    total = sum(p.numel() for p in sim.peers[0].tracker.trainer.model.parameters())
    start = time.perf_counter()
    before = sim.validation_loss()
    reports = sim.run(rounds)
    return {
        "lora_rank": rank, "shared_params": shared, "model_params": total,
        "payload_bytes_per_update": round(sum(r.mean_payload_bytes for r in reports) / len(reports)),
        "bytes_per_round": round(sum(sum(o.payload_bytes for o in r.outcomes) for r in reports) / len(reports)),
        "validation_loss": [round(before, 4), *(round(r.validation_loss, 4) for r in reports)],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="inner steps per round")
    parser.add_argument("--out", default="benchmarks/results/hf_lora.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (hidden, layers) in MODELS.items():
            model_dir = write_model(Path(tmp) / name, hidden, layers)
            for codec_name, codec in CODECS.items():
                full = run(model_dir, 0, codec, args.rounds, args.steps)
                lora = run(model_dir, args.rank, codec, args.rounds, args.steps)
                row = {"model": name, "codec": codec_name, "peers": 2, "full": full, "lora": lora,
                       "bytes_ratio_full_over_lora": round(full["bytes_per_round"] / lora["bytes_per_round"], 1)}
                print(json.dumps(row), flush=True)
                results.append(row)
    Path(args.out).write_text(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                                          "rounds": args.rounds, "inner_steps": args.steps,
                                          "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
