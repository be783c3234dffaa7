"""--inner-optim: fp32 AdamW against bitsandbytes' 8-bit AdamW for the inner loop.

Prints ONE JSON document: per model, the optimizer state's bytes, the peak resident
memory of a process that builds the model and takes the steps, the mean loss of the
last steps and the steps per second, for each optimizer (the same seed and batches).
Each measurement runs in a fresh process, so peak memory is that optimizer's alone.

    python benchmarks/inner_optim.py --out benchmarks/results/inner_optim.json   # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import emit

from swarmtrain.peer.config import SwarmConfig, preset
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.peer.training.trainer import INNER_OPTIMIZERS, LocalTrainer

STEPS = 60
LAST = 20  # the mean loss of the last LAST steps is reported


def _llama_dir(root: Path, d_model: int, layers: int) -> Path:
    """A Llama config with no weights (the task draws them from the seed): no download."""
    from transformers import LlamaConfig

    path = root / f"llama-d{d_model}-l{layers}"
    LlamaConfig(vocab_size=256, hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=layers,
                num_attention_heads=max(1, d_model // 64), num_key_value_heads=max(1, d_model // 64),
                max_position_embeddings=256).save_pretrained(path)
    return path


def _measure(spec: dict[str, object], kind: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    config: SwarmConfig = spec["config"]  # type: ignore[assignment]
    task = load_task(config, data=tuple(spec.get("data", ())))  # type: ignore[arg-type]
    trainer = LocalTrainer(task, config.train, stream_seed=0, inner_optim=kind)
    params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.run(STEPS - LAST)
    started = time.perf_counter()
    report = trainer.run(LAST)
    queue.put({
        "optimizer": kind, "parameters": params, "state_bytes": trainer.optimizer_state_bytes(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "last_loss": round(report.mean_loss, 4), "steps_per_s": round(LAST / (time.perf_counter() - started), 2),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        small = preset("small")
        llama = _llama_dir(Path(tmp), d_model=512, layers=6)
        base = preset("smoke")
        hf = base.replace(task=f"hf:{llama}", model=dataclasses.replace(base.model, context=128),
                          train=dataclasses.replace(base.train, batch_size=4))
        stdlib = Path(json.__file__).parent  # text that ships with Python
        specs = {"stdlib-lm small preset": {"config": small},
                 "Llama d512 x 6 layers (hf:)": {"config": hf, "data": [str(stdlib)]}}
        ctx = multiprocessing.get_context("spawn")
        rows = []
        for name, spec in specs.items():
            for kind in INNER_OPTIMIZERS:
                queue = ctx.Queue()
                proc = ctx.Process(target=_measure, args=(spec, kind, queue))
                proc.start()
                result = queue.get(timeout=900)
                proc.join()
                rows.append({"model": name, **result})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for name in specs:
        fp32, eight = (next(r for r in rows if r["model"] == name and r["optimizer"] == k) for k in INNER_OPTIMIZERS)
        eight["state_smaller_than_adamw"] = round(fp32["state_bytes"] / eight["state_bytes"], 2)  # type: ignore[operator]
    doc = {"benchmark": "inner_optim", "command": "python benchmarks/inner_optim.py", "steps": STEPS,
           "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": "cpu"},
           "rows": rows}
    emit(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
