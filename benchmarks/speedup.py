"""Is joining the swarm worth it? A swarm against one peer training alone, side by side.

Prints ONE JSON document. Every loss is measured on the same held-out batches
(``EVAL_SEED``), which no peer votes with. Two parts:

``sim``  K simulated peers (the real round: train, encode, check, vote, merge) at equal
         per-peer steps, for K = 4 and 8, against
         - one peer alone (batch 16): its loss curve over steps, and
         - data-parallel training with K times the batch for the same steps (the ceiling).
         speedup = steps the lone peer needs to reach the swarm's final loss / per-peer steps.

``real`` a local swarm of K=3 real peer processes (``swarmtrain join``, p2pd, DHT) against
         the lone peer at the same per-peer CPU share: three lone trainers run side by side
         to measure how fast one trains on a third of this machine.
         speedup = (lone steps to reach the swarm's final loss / lone steps per second)
                   / the swarm's per-peer training time.
         Per-peer utilisation (time in inner steps / wall time) comes from the peers.

    python benchmarks/speedup.py                # both parts (~35 min on 2 cores)
    python benchmarks/speedup.py --part sim --ks 4
    python benchmarks/speedup.py --part real --rounds 20   # make demo's length
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from swarmtrain.peer.config import AVERAGE, DENSE, CodecConfig, OuterConfig, SwarmConfig, preset
from swarmtrain.peer.round.simulate import Simulation
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.peer.training.trainer import INNER_OPTIMIZERS, LocalTrainer, evaluate_loss

EVAL_SEED = 987654321
EVAL_BATCHES = 64
LONE_CHECKPOINT = 100


def _config(batch: int = 16, **train: int) -> SwarmConfig:
    base = preset("demo")
    return base.replace(train=dataclasses.replace(base.train, batch_size=batch, **train))


class Evaluator:
    """Held-out loss on the benchmark's own batches (the same for every contender)."""

    def __init__(self, config: SwarmConfig) -> None:
        self.task = load_task(config)
        self.model = self.task.build_model()
        self.batches = self.task.heldout_batches(EVAL_BATCHES, EVAL_SEED)

    def __call__(self, params: dict[str, torch.Tensor]) -> float:
        return evaluate_loss(self.task, self.model, self.batches, params=params)


def lone_curve(target: float, max_steps: int, evaluate: Evaluator) -> list[tuple[int, float]]:
    """One peer (batch 16, stream 0) trained until its loss is below ``target``, or for
    ``max_steps``: (steps, loss) every ``LONE_CHECKPOINT`` steps."""
    config = _config()
    trainer = LocalTrainer(load_task(config), config.train, stream_seed=0)
    curve = [(0, evaluate(trainer.params()))]
    while curve[-1][0] < max_steps and curve[-1][1] > target:
        trainer.run(LONE_CHECKPOINT)
        curve.append((curve[-1][0] + LONE_CHECKPOINT, evaluate(trainer.params())))
    return curve


def steps_to_reach(curve: list[tuple[int, float]], loss: float) -> float | None:
    """First step count at which the lone curve reaches ``loss`` (linear between
    checkpoints); None when it never does within the curve."""
    for (s0, l0), (s1, l1) in zip(curve, curve[1:]):
        if l1 <= loss:
            return s1 if l0 == l1 else s0 + (s1 - s0) * (l0 - loss) / (l0 - l1)
    return None


def data_parallel(k: int, steps: int, evaluate: Evaluator) -> float:
    """One process, batch k x 16, ``steps`` steps: the ceiling for k peers."""
    config = _config(batch=16 * k)
    trainer = LocalTrainer(load_task(config), config.train, stream_seed=0)
    trainer.run(steps)
    return evaluate(trainer.params())


# The >=100x setting: top 1.5 % per chunk at 2 bits with the SparseLoCo step, the best
# compressed setting measured at few steps a round (docs/decisions.md, "Round math").
COMPRESSED = CodecConfig(density=0.015, bits=2)


def swarm_config(compressed: bool, inner_steps: int) -> SwarmConfig:
    config = _config(inner_steps=inner_steps)
    if compressed:
        return config.replace(codec=COMPRESSED, outer=OuterConfig())
    return config.replace(codec=DENSE, outer=AVERAGE)


def simulated(k: int, steps: int, inner_steps: int, overlap: float, compressed: bool,
              evaluate: Evaluator, inner_optim: str = "adamw") -> dict[str, object]:
    config = swarm_config(compressed, inner_steps)
    sim = Simulation(config, peers=k, overlap=overlap, inner_optim=inner_optim)
    reports = sim.run(steps // inner_steps)
    fp32 = reports[-1].fp32_bytes
    payload = sum(r.mean_payload_bytes for r in reports) / len(reports)
    return {
        "final_loss": round(evaluate(sim.params), 4),
        "accepted": sum(r.accepted for r in reports), "updates": sum(len(r.outcomes) for r in reports),
        "bytes_per_peer_per_round": round(payload), "smaller_than_fp32": round(fp32 / payload, 1),
        "density": config.codec.density, "bits": config.codec.bits, "outer": dataclasses.asdict(config.outer),
        "inner_optim": inner_optim,
    }


def _sim_job(args: tuple[str, int, int, int, float, bool, str]) -> tuple[str, int, object]:
    kind, k, steps, inner_steps, overlap, compressed, inner_optim = args
    torch.set_num_threads(1)
    evaluate = Evaluator(_config())
    if kind == "dp":
        return kind, k, round(data_parallel(k, steps, evaluate), 4)
    return kind, k, simulated(k, steps, inner_steps, overlap, compressed, evaluate, inner_optim)


def part_sim(ks: list[int], steps: int, inner_steps: int, overlap: float, jobs: int,
             inner_optim: str = "adamw") -> dict[str, object]:
    work = [(kind, k, steps, inner_steps, overlap, kind == "compressed", inner_optim)
            for k in ks for kind in ("compressed", "uncompressed", "dp")]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        done = {(kind, k): out for kind, k, out in pool.map(_sim_job, work, chunksize=1)}
    evaluate = Evaluator(_config())
    finals = [float(done[("compressed", k)]["final_loss"]) for k in ks]  # type: ignore[index]
    finals += [float(done[("dp", k)]) for k in ks]  # type: ignore[arg-type]
    curve = lone_curve(min(finals), max_steps=max(ks) * steps * 2, evaluate=evaluate)
    rows = []
    for k in ks:
        dp_loss = float(done[("dp", k)])  # type: ignore[arg-type]
        ceiling = _ratio(steps_to_reach(curve, dp_loss), steps)
        row: dict[str, object] = {"k": k, "per_peer_steps": steps, "inner_steps": inner_steps, "overlap": overlap,
                                  "data_parallel": {"batch": 16 * k, "final_loss": dp_loss, "speedup": ceiling}}
        for kind in ("compressed", "uncompressed"):
            result = dict(done[(kind, k)])  # type: ignore[arg-type]
            speedup = _ratio(steps_to_reach(curve, float(result["final_loss"])), steps)
            result["speedup"] = speedup
            result["share_of_ceiling"] = None if speedup is None or not ceiling else round(speedup / ceiling, 3)
            row[kind] = result
        row["lone_loss_at_same_steps"] = _loss_at(curve, steps)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"rows": rows, "lone_curve": [[s, round(loss, 4)] for s, loss in curve]}


def _ratio(lone_steps: float | None, steps: float) -> float | None:
    return None if lone_steps is None else round(lone_steps / steps, 3)


def _loss_at(curve: list[tuple[int, float]], steps: float) -> float:
    """The lone peer's loss after ``steps`` (linear between checkpoints; last one beyond)."""
    for (s0, l0), (s1, l1) in zip(curve, curve[1:]):
        if s1 >= steps:
            return round(l0 + (l1 - l0) * (steps - s0) / (s1 - s0), 4)
    return round(curve[-1][1], 4)


# --- the real swarm ----------------------------------------------------------------------

TRAINED = re.compile(r"trained (\d+) steps in ([0-9.]+)s \(utilisation ([0-9.]+)%")


def _lone_rate_job(args: tuple[int, float]) -> int:
    """Steps one lone trainer takes in ``seconds`` (run three side by side)."""
    seed, seconds = args
    torch.set_num_threads(1)
    config = _config()
    trainer = LocalTrainer(load_task(config), config.train, stream_seed=seed)
    trainer.run(5)  # warm-up outside the timed window
    return trainer.run(10**9, deadline=time.monotonic() + seconds).steps


def part_real(peers: int, rounds: int, preset_name: str, lone_seconds: float,
              inner_optim: str = "adamw") -> dict[str, object]:
    from swarmtrain.peer.app.launch import start_peer
    from swarmtrain.peer.store.versions import VersionStore

    root = Path(tempfile.mkdtemp(prefix="swarmtrain-speedup-"))
    procs = []
    started = time.time()
    try:
        common = ["--swarm", "speedup", "--rounds", str(rounds), "--preset", preset_name,
                  "--inner-optim", inner_optim]
        procs.append(start_peer("peer0", root / "peer0", [*common, "--start-delay", "20"]))
        address = procs[0].address()
        for i in range(1, peers):
            procs.append(start_peer(f"peer{i}", root / f"peer{i}", [*common, "--initial-peers", address]))
        for proc in procs:
            proc.process.wait(timeout=rounds * 120 + 300)
        logs = [proc.log_text() for proc in procs]
    finally:
        for proc in procs:
            proc.stop()
    wall = time.time() - started
    trained = []
    for name, log in zip((p.name for p in procs), logs):
        match = TRAINED.search(log)
        if match is None:
            raise RuntimeError(f"{name} did not finish its rounds; its log ends:\n{log[-2000:]}")
        trained.append({"peer": name, "steps": int(match.group(1)), "seconds": float(match.group(2)),
                        "utilisation": round(float(match.group(3)) / 100, 4),
                        "resynced": log.count(", resynced"), "rounds": log.count("\nround ")})
    store = VersionStore(root / "peer0" / "versions", read_only=True)
    try:
        head = store.head()
        assert head is not None
        params, _ = store.load(head.version_id)
    finally:
        store.close()
    shutil.rmtree(root, ignore_errors=True)

    evaluate = Evaluator(_config())
    swarm_loss = evaluate(params)
    per_peer_seconds = sum(t["seconds"] for t in trained) / len(trained)  # type: ignore[misc]
    per_peer_steps = sum(t["steps"] for t in trained) / len(trained)  # type: ignore[misc]
    # The lone peer's speed with the same share of this machine: as many lone trainers
    # side by side as the swarm had peers.
    with multiprocessing.get_context("spawn").Pool(peers) as pool:
        counts = pool.map(_lone_rate_job, [(seed, lone_seconds) for seed in range(peers)])
    lone_rate = sum(counts) / len(counts) / lone_seconds
    dp_loss = data_parallel(peers, round(per_peer_steps), evaluate)
    curve = lone_curve(min(swarm_loss, dp_loss), max_steps=int(40 * per_peer_steps), evaluate=evaluate)
    lone_steps = steps_to_reach(curve, swarm_loss)
    speedup = None if lone_steps is None else round(lone_steps / lone_rate / per_peer_seconds, 3)
    return {
        "peers": peers, "rounds": rounds, "preset": preset_name, "inner_optim": inner_optim,
        "wall_seconds": round(wall, 1),
        "swarm": {"final_loss": round(swarm_loss, 4), "per_peer_seconds": round(per_peer_seconds, 1),
                  "per_peer_steps": round(per_peer_steps), "peers": trained},
        "lone": {"steps_per_second_at_same_share": round(lone_rate, 2),
                 "loss_at_equal_wall_time": _loss_at(curve, lone_rate * per_peer_seconds),
                 "steps_to_reach_swarm_loss": None if lone_steps is None else round(lone_steps)},
        "speedup": speedup,
        "data_parallel_at_same_per_peer_steps": {
            "batch": 16 * peers, "final_loss": round(dp_loss, 4),
            "speedup_in_steps": _ratio(steps_to_reach(curve, dp_loss), per_peer_steps)},
        "swarm_speedup_in_steps": _ratio(lone_steps, per_peer_steps),
        "lone_curve": [[s, round(loss, 4)] for s, loss in curve],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("sim", "real", "both"), default="both")
    parser.add_argument("--ks", default="4,8", help="simulated swarm sizes")
    parser.add_argument("--steps", type=int, default=900, help="per-peer inner steps in the simulated swarms")
    parser.add_argument("--inner-steps", type=int, default=5, help="steps per round in the simulated swarms")
    parser.add_argument("--overlap", type=float, default=0.0,
                        help="share of a round's steps taken during its exchange (simulated)")
    parser.add_argument("--jobs", type=int, default=2, help="simulations run side by side")
    parser.add_argument("--inner-optim", choices=INNER_OPTIMIZERS, default="adamw",
                        help="the swarm peers' inner optimizer (the lone peer and data-parallel keep AdamW)")
    parser.add_argument("--peers", type=int, default=3, help="real swarm size")
    parser.add_argument("--rounds", type=int, default=20, help="real swarm rounds (default 20, as make demo)")
    parser.add_argument("--preset", default="demo", help="real swarm preset")
    parser.add_argument("--lone-seconds", type=float, default=40.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    doc: dict[str, object] = {
        "benchmark": "speedup", "command": " ".join(["python", *sys.argv]),
        "task": "stdlib-lm", "model": dataclasses.asdict(preset("demo").model), "eval_batches": EVAL_BATCHES,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "cores": multiprocessing.cpu_count()},
    }
    if args.part in ("sim", "both"):
        doc["simulated"] = part_sim([int(k) for k in args.ks.split(",")], args.steps, args.inner_steps,
                                    args.overlap, args.jobs, args.inner_optim)
    if args.part in ("real", "both"):
        doc["real"] = part_real(args.peers, args.rounds, args.preset, args.lone_seconds, args.inner_optim)
    doc["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
