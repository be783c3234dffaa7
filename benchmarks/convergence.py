"""Convergence at equal compute: K simulated peers vs one peer, compressed vs uncompressed.

Runs the real round (train, encode, check, vote, merge) in one process through
:class:`swarmtrain.peer.round.simulate.Simulation` on the stdlib-lm task and prints ONE JSON
document: per setting the final validation loss (nats/byte, on the simulator's fixed
held-out batches), the bytes each peer sends per round, the compression ratio against a
dense fp32 update, and how many updates were accepted.

Every setting spends the same number of inner steps in total (peers x rounds x H); the
single peer does them all alone, with no exchange.

    python benchmarks/convergence.py            # full table (~15 min on 2 cores)
    python benchmarks/convergence.py --quick    # a smaller budget (~3 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import torch

from swarmtrain.peer.config import CodecConfig, OuterConfig, SwarmConfig, preset
from swarmtrain.peer.round.simulate import VALIDATION_SEED, Simulation
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.peer.training.trainer import LocalTrainer, evaluate_loss

# (label, density, bits); density 1.0 / 32 bits means uncompressed DiLoCo with Nesterov.
SETTINGS: list[tuple[str, float, int]] = [
    ("uncompressed", 1.0, 32),
    ("d=0.01 b=2", 0.01, 2),
    ("d=0.015 b=2", 0.015, 2),
    ("d=0.02 b=2", 0.02, 2),
    ("d=0.015 b=8", 0.015, 8),
]


def config_for(density: float, bits: int, inner_steps: int, batch: int) -> SwarmConfig:
    base = preset("demo")
    train = dataclasses.replace(base.train, inner_steps=inner_steps, batch_size=batch)
    if density >= 1.0 and bits == 32:
        return base.replace(train=train, codec=CodecConfig(density=1.0, bits=32),
                            outer=OuterConfig(kind="nesterov", lr=0.7, momentum=0.9, ef_decay=0.0))
    return base.replace(train=train, codec=CodecConfig(density=density, bits=bits), outer=OuterConfig())


def run_setting(label: str, config: SwarmConfig, peers: int, rounds: int) -> dict[str, object]:
    started = time.monotonic()
    sim = Simulation(config, peers=peers)
    initial = sim.validation_loss()
    reports = sim.run(rounds)
    last = reports[-1]
    accepted = sum(r.accepted for r in reports)
    total = sum(len(r.outcomes) for r in reports)
    payload = sum(r.mean_payload_bytes for r in reports) / len(reports)
    row = {
        "setting": label,
        "peers": peers,
        "rounds": rounds,
        "inner_steps": config.train.inner_steps,
        "density": config.codec.density,
        "bits": config.codec.bits,
        "outer": config.outer.kind,
        "initial_loss": round(initial, 4),
        "final_loss": round(last.validation_loss, 4),
        "loss_curve": [round(r.validation_loss, 4) for r in reports],
        "bytes_per_peer_per_round": round(payload),
        "compression_vs_fp32": round(last.fp32_bytes / payload, 1),
        "accepted": accepted,
        "updates": total,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def run_single(config: SwarmConfig, total_steps: int) -> dict[str, object]:
    """One peer doing every inner step alone (no exchange): the compute-matched baseline."""
    started = time.monotonic()
    task = load_task(config)
    model = task.build_model()
    trainer = LocalTrainer(task, config.train, stream_seed=0)
    trainer.load_params(dict(model.named_parameters()))
    report = trainer.run(total_steps)
    batches = task.heldout_batches(8, VALIDATION_SEED)
    loss = evaluate_loss(task, model, batches, params=trainer.params())
    row = {"setting": "single peer", "peers": 1, "inner_steps_total": report.steps,
           "final_loss": round(loss, 4), "bytes_per_peer_per_round": 0,
           "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--inner-steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="10 rounds, for a fast look")
    parser.add_argument("--only", default=None, help="comma-separated setting labels to run")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 10
    torch.set_num_threads(1)
    started = time.monotonic()
    rows = []
    wanted = set(args.only.split(",")) if args.only else None
    for label, density, bits in SETTINGS:
        if wanted and label not in wanted:
            continue
        rows.append(run_setting(label, config_for(density, bits, args.inner_steps, args.batch),
                                args.peers, args.rounds))
    if not wanted or "single peer" in wanted:
        rows.append(run_single(config_for(1.0, 32, args.inner_steps, args.batch),
                               args.peers * args.rounds * args.inner_steps))
    doc = {
        "benchmark": "convergence",
        "command": " ".join(["python", *sys.argv]),
        "task": "stdlib-lm",
        "model": dataclasses.asdict(preset("demo").model),
        "batch": args.batch,
        "total_inner_steps": args.peers * args.rounds * args.inner_steps,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "threads": 1},
        "results": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
