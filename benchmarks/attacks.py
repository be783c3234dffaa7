"""The attack matrix: what each attack does to the swarm's training, against an all-honest run.

Prints ONE JSON document (and writes it to benchmarks/results/attacks.json with --out).
Every row is a one-process swarm (``Simulation``: the real round's training, encoding,
checks, votes, decision and merge, no network) of 3 honest peers plus attackers, run for
the same rounds as 3 honest peers alone, with the same seeds. Per row:

- ``loss_ratio``: the attacked swarm's final held-out loss / the all-honest swarm's
  (the issue's bar: within 2 %, i.e. <= 1.02);
- ``honest_accepted``: the share of honest updates merged (bar: >= 95 %);
- ``attacker_accepted``: attacker updates merged;
- ``attacker_cooled_off`` / ``honest_cooled_off``: updates its checkers rejected unread,
  the author having 3 offences (as each checker saw them) in the last 8 rounds.

Attackers join at round 1 (``attack_from``), after the honest peers have earned standing,
except in the "from the first round" row, which shows what standing cannot stop.

    python benchmarks/attacks.py --out benchmarks/results/attacks.json          # ~30 s
    python benchmarks/attacks.py --task stdlib-lm --out benchmarks/results/attacks-lm.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from report import command, emit, machine

from swarmtrain.peer.config import CodecConfig, OuterConfig, SwarmConfig, preset
from swarmtrain.peer.round.simulate import RoundReport, Simulation
from swarmtrain.peer.training.faults import FAULT_MODES, skips_work

HONEST = 3
IDENTITY_BITS = 12  # the free-identity row's swarm prices identities at 2^12 hashes


@dataclasses.dataclass(frozen=True)
class Attack:
    name: str
    fault: str | None  # None: the all-honest run
    attackers: int
    attack_from: int = 1


def matrix() -> list[Attack]:
    # late-commit is left out: its commitment is never in the round (the simulator drops it).
    singles = [Attack(f"1 x {mode}", mode, 1) for mode in FAULT_MODES if mode not in ("late-commit", "collude")]
    return singles + [
        Attack("4 colluders (3 honest)", "collude", 4),
        Attack("6 colluders (2x sybils)", "collude", 6),
        Attack("4 colluders from the first round", "collude", 4, attack_from=0),
    ]


def config(rounds_steps: int, task: str) -> SwarmConfig:
    """A compressed smoke swarm (the codec's error feedback is in play)."""
    base = preset("smoke").replace(task=task)
    return base.replace(
        codec=CodecConfig(density=0.05, bits=4, chunk=base.codec.chunk), outer=OuterConfig(),
        train=dataclasses.replace(base.train, inner_steps=rounds_steps))


def run(cfg: SwarmConfig, rounds: int, attack: Attack | None) -> dict[str, object]:
    started = time.monotonic()
    if attack is not None and skips_work(attack.fault):
        # Only a swarm that prices identities refuses it; honest peers pay and are admitted,
        # so the all-honest baseline is the same run.
        cfg = cfg.replace(vote=dataclasses.replace(cfg.vote, identity_bits=IDENTITY_BITS))
    if attack is None:
        reports = Simulation(cfg, peers=HONEST).run(rounds)
    else:
        reports = Simulation(cfg, peers=HONEST + attack.attackers, fault=attack.fault,
                             faulty=attack.attackers, attack_from=attack.attack_from).run(rounds)
    honest = {f"peer{i}" for i in range(HONEST)}
    return {
        "final_loss": round(reports[-1].validation_loss, 5),
        "honest_accepted": _count(reports, lambda peer: peer in honest),
        "attacker_accepted": _count(reports, lambda peer: peer not in honest),
        # Attacker updates the checkers rejected unread: its author was cooling off.
        "attacker_cooled_off": sum(o.reason.startswith("cooling off") for r in reports for o in r.outcomes
                                   if o.peer not in honest),
        "honest_cooled_off": sum(o.reason.startswith("cooling off") for r in reports for o in r.outcomes
                                 if o.peer in honest),
        "seconds": round(time.monotonic() - started, 1),
    }


def run_rows(attacks: list[Attack], run_one: Callable[[Attack], dict[str, object]], baseline: dict[str, object],
             only: str | None) -> list[dict[str, object]]:
    """Each attack's row (those whose name contains ``only``, if given): its result and
    how it compares with the all-honest ``baseline``, printed to stderr as it comes."""
    rows: list[dict[str, object]] = []
    for attack in attacks:
        if only and only not in attack.name:
            continue
        result = run_one(attack)
        rows.append({"attack": attack.name, "fault": attack.fault, "attackers": attack.attackers,
                     "attack_from": attack.attack_from, **result, **against(result, baseline)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def emit_matrix(benchmark: str, script: str, argv: list[str] | None, settings: dict[str, object],
                baseline: dict[str, object], rows: list[dict[str, object]], out: Path | None) -> None:
    """An attack matrix's JSON document: what was run, on what, the baseline and the rows."""
    emit({"benchmark": benchmark, "command": command(script, argv), **settings, "machine": machine(),
          "all_honest": baseline, "rows": rows}, out)


def against(result: dict[str, object], baseline: dict[str, object]) -> dict[str, float]:
    """A row's final loss over the all-honest run's, and its share of honest updates merged."""
    honest = result["honest_accepted"]
    return {"loss_ratio": round(result["final_loss"] / baseline["final_loss"], 4),  # type: ignore[operator]
            "honest_accepted_share": round(honest["accepted"] / max(1, honest["updates"]), 4)}  # type: ignore[index]


def _count(reports: list[RoundReport], who) -> dict[str, int]:  # type: ignore[no-untyped-def]
    outcomes = [o for r in reports for o in r.outcomes if who(o.peer)]
    return {"accepted": sum(o.accepted for o in outcomes), "updates": len(outcomes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--inner-steps", type=int, default=40)
    parser.add_argument("--task", default="synthetic", help="synthetic (~30 s) or stdlib-lm (a byte-level LM)")
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = config(args.inner_steps, args.task)
    baseline = run(cfg, args.rounds, None)
    rows = run_rows(matrix(), lambda attack: run(cfg, args.rounds, attack), baseline, args.only)
    emit_matrix("attacks", "attacks.py", argv, {
        "task": cfg.task, "honest_peers": HONEST, "rounds": args.rounds, "inner_steps": args.inner_steps,
        "codec": {"density": cfg.codec.density, "bits": cfg.codec.bits},
    }, baseline, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
