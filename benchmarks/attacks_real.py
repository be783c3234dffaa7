"""The attack matrix on real peers: `swarmtrain join` processes over p2pd on loopback.

Prints ONE JSON document (and writes it with --out). Each row is a swarm of 3 honest
peers and the row's attackers (the project's own peer with one ``--fault`` behaviour),
all from round 0, bootstrapped by a stock hivemind-dht node, for ``--rounds`` rounds of
the smoke model. Every peer's steps a round are capped (``--inner-steps``) low enough
that each reaches the cap in every window however many share the two cores, so the
honest peers train the same amount in every row: the loss ratio measures the attack, not
the CPU share (``honest_steps_min`` shows the cap was reached). The honest peers keep
their identities from row to row, and so their data order. The all-honest swarm runs
twice; the repeat's ratio is the run-to-run noise left (timing: how many of a window's
steps run before the round's merge arrives, and the draws of a new genesis).

Per row:
- ``loss_ratio``: held-out loss of the honest peers' final version / the all-honest run's;
- ``honest_versions``: distinct final (version, checksum) among the honest peers (1 = agree);
- ``honest_accepted`` / ``attacker_accepted``: updates merged, from honest0's history;
- ``honest_rejected``: [round, reason] of each honest update not merged;
- ``honest_rounds``: rounds each honest peer ended (a stalled peer ends fewer);
- ``exit_codes``: every process's (0 for every honest peer: nobody crashed);
- ``resyncs``: times an honest peer recomputed another's result (its log's "recomputed").

    python benchmarks/attacks_real.py --out benchmarks/results/attacks-real.json   # ~20 min
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attacks import Attack, emit_matrix, run_rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from swarmkit import SMOKE, Swarm, by_round, heldout_loss, history  # noqa: E402  (the integration tests' helpers)

from swarmtrain.dht.identity import IDENTITY_FILENAME  # noqa: E402

HONEST = 3


# Every attacker is there from round 0.
ROWS = [Attack(name, fault, attackers, attack_from=0) for name, fault, attackers in (
    ("all honest (repeat: run-to-run noise)", None, 0),
    ("4 colluders (3 honest)", "collude", 4),
    ("6 colluders (2x sybils)", "collude", 6),
    ("1 x late-commit", "late-commit", 1),
    ("1 x copycat", "copycat", 1),
    ("1 x overflow", "overflow", 1),
    ("1 x inflate", "inflate", 1),
    ("1 x bad-checksum", "bad-checksum", 1),
    ("1 x metadata", "metadata", 1),
)]


def _peer_id(log: str) -> str | None:
    """The peer id a process printed (None: it never got that far)."""
    return next((line.split()[1] for line in log.splitlines() if line.startswith("peer ")), None)


def run(root: Path, index: int, row: Attack, *, rounds: int, inner_steps: int, start_delay: float,
        identities: Path | None = None) -> dict[str, object]:
    started = time.monotonic()
    swarm = Swarm(root / f"row{index}", f"attacks-real-{index}")
    honest = [f"honest{i}" for i in range(HONEST)]
    attackers = [f"attacker{i}" for i in range(row.attackers)]
    # The honest peers keep the all-honest run's identities: a peer's data order is
    # seeded by its id, so every row trains the honest peers on the same batches.
    # --identities gives every peer its identity (to rerun one recorded swarm).
    source = identities or (root / "row0" if index > 0 else None)
    for label in honest + attackers:
        if source is not None and (source / label / IDENTITY_FILENAME).is_file():
            (swarm.root / label).mkdir(parents=True)
            shutil.copy2(source / label / IDENTITY_FILENAME, swarm.root / label / IDENTITY_FILENAME)
    try:
        bootstrap = swarm.start_plain_hivemind()
        common = [*SMOKE, "--rounds", str(rounds), "--inner-steps", str(inner_steps), "--initial-peers", bootstrap]
        swarm.start(honest[0], *common, "--start-delay", str(start_delay))
        swarm.wait_for_line(honest[0], "join with:", timeout=120)
        for label in honest[1:]:
            swarm.start(label, *common)
        for label in attackers:
            swarm.start(label, *common, "--fault", str(row.fault))
        deadline = time.monotonic() + start_delay + rounds * 40 + 180
        for proc in swarm.peers.values():
            try:
                proc.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # still running at the deadline: recorded as exit code None, then stopped
        codes = {label: proc.process.poll() for label, proc in swarm.peers.items()}
    finally:
        swarm.stop_all()
    logs = {label: proc.log_text() for label, proc in swarm.peers.items()}
    honest_ids = {_peer_id(logs[h]) for h in honest}
    attacker_ids = {_peer_id(logs[a]) for a in attackers} - {None}
    dirs = [swarm.root / h for h in honest]
    finals = [history(d)[-1] for d in dirs]
    rounds_done = {h: len(by_round(d)) for h, d in zip(honest, dirs)}
    contributions = [c for commit in by_round(dirs[0]).values() for c in commit.contributions]
    steps = [int(line.split(" steps,")[0].rsplit(" ", 1)[1]) for h in honest for line in logs[h].splitlines()
             if line.startswith("round ") and " steps," in line]
    return {
        "final_loss": round(heldout_loss(dirs[0], finals[0].version_id), 5),
        "honest_versions": len({(c.version_id, c.state_checksum) for c in finals}),
        "honest_accepted": {"accepted": sum(c.accepted for c in contributions if c.peer_id in honest_ids),
                            "updates": sum(c.peer_id in honest_ids for c in contributions)},
        "honest_rejected": [[commit.round, c.reason] for commit in by_round(dirs[0]).values()
                            for c in commit.contributions if c.peer_id in honest_ids and not c.accepted],
        "attacker_accepted": {"accepted": sum(c.accepted for c in contributions if c.peer_id in attacker_ids),
                              "updates": sum(c.peer_id in attacker_ids for c in contributions)},
        "honest_rounds": rounds_done,
        "honest_steps_min": min(steps) if steps else None,
        "exit_codes": codes,
        "resyncs": sum(logs[h].count("recomputed version") for h in honest),
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--inner-steps", type=int, default=40,
                        help="steps a round, low enough that every peer reaches it (default 40)")
    parser.add_argument("--start-delay", type=float, default=45.0,
                        help="seconds before round 0, for every process to start (default 45)")
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this")
    parser.add_argument("--identities", type=Path, default=None, metavar="DIR",
                        help="DIR/LABEL/identity.key (honest0.., attacker0..) for the peers that have one there")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="attacks-real-") as tmp:
        root = Path(tmp)
        swarm = functools.partial(run, root, rounds=args.rounds, inner_steps=args.inner_steps,
                                  start_delay=args.start_delay, identities=args.identities)
        baseline = swarm(0, Attack("all honest", None, 0, attack_from=0))
        print(baseline, file=sys.stderr, flush=True)
        rows = run_rows(ROWS, lambda row: swarm(ROWS.index(row) + 1, row), baseline, args.only)
    emit_matrix("attacks-real", "attacks_real.py", argv, {
        "preset": "smoke", "honest_peers": HONEST, "rounds": args.rounds, "inner_steps": args.inner_steps,
    }, baseline, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
