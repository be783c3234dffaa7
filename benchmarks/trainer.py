"""Inner-loop speed per device: AdamW steps per second of the stdlib-lm task; prints JSON.

A peer's round is mostly inner steps, so this is what a GPU buys a peer (``--device``).
For each preset and device: warm-up steps, then timed steps (CUDA synchronised), and the
pseudo-gradient hand-off (params back to the CPU in fp32) that ends every round.

    python benchmarks/trainer.py                      # every device torch sees
    python benchmarks/trainer.py --devices cpu --presets demo --steps 50
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import torch

from swarmtrain.peer.config import preset
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.peer.training.trainer import LocalTrainer, resolve_device


def measure(preset_name: str, device: str, steps: int, warmup: int) -> dict[str, Any]:
    config = preset(preset_name)
    task = load_task(config)
    trainer = LocalTrainer(task, config.train, stream_seed=0, device=resolve_device(device))
    trainer.run(warmup)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    report = trainer.run(steps)
    sync()
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    trainer.params()
    handoff = time.perf_counter() - start
    return {
        "preset": preset_name, "device": str(trainer.device),
        "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else platform.processor(),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "batch_size": config.train.batch_size, "steps": report.steps,
        "steps_per_s": round(report.steps / seconds, 1), "samples_per_s": round(report.samples / seconds, 1),
        "params_to_cpu_ms": round(1000 * handoff, 2), "final_train_loss": round(report.mean_loss, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["demo", "small"])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = [measure(p, d, args.steps, args.warmup) for p in args.presets for d in devices]
    print(json.dumps({
        "benchmark": "trainer", "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
