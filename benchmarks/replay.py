"""How long a late joiner takes to verify N rounds of a swarm's history by replay.

Prints ONE JSON document (and writes it with --out). 3 peers of a preset play N rounds
through the real round engine: commitments, checks on held-out batches, ballots, the
decision, the merge, the version store on disk and the kept payloads. Then a fresh peer
that holds only the genesis catches up: for every round it reads the published results,
ballots and commitments, fetches the accepted payloads, decides, merges, and adopts the
version only when its id and checksum come out equal (``StateSync.catch_up``, as on a
network). It takes nothing on trust.

The round records and blobs move in memory (the unit tests' ``memswarm``: the DHT and
p2pd are not in that part). ``--dht`` times what a network adds per round on real DHT
nodes: reading its results, ballots and commitments (3 DHT reads); the payload downloads
are not in it (``benchmarks/exchange.py`` measures p2pd's throughput). Peers train only ``--steps`` steps a round: the
replay's cost does not depend on how long the rounds trained.

    python benchmarks/replay.py --rounds 100 --dht --out benchmarks/results/replay.json   # demo preset
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import command, emit, machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
from memswarm import MemoryTable, lockstep_round, memory_swarm  # noqa: E402  (the unit tests' in-memory swarm)

from swarmtrain.peer.config import preset  # noqa: E402


def dht_reads(table: MemoryTable, rounds: int, tmp: Path) -> dict[str, object]:
    """The network part of a replay that the in-memory run leaves out: reading every
    round's results, ballots and commitments from a real DHT (3 publisher nodes holding
    the rounds' records under their own ids, and a 4th node that joins and reads)."""
    from concurrent.futures import ThreadPoolExecutor

    from swarmtrain.dht import SwarmRecords
    from swarmtrain.dht.bootstrap import start_dht, visible_maddrs
    from swarmtrain.dht.identity import load_or_create_identity

    nodes: list[tuple[object, SwarmRecords]] = []
    try:
        for i in range(4):
            identity = load_or_create_identity(tmp / f"dht{i}")
            peers = visible_maddrs(nodes[0][0]) if nodes else []  # type: ignore[arg-type]
            dht = start_dht(initial_peers=peers, identity=identity, swarm="replay-bench")
            nodes.append((dht, SwarmRecords(dht, identity, "replay-bench")))
        authors = sorted({peer for (family, _), recs in table.rows.items() for peer in recs})

        def publish(node: int) -> None:
            records = nodes[node][1]
            me, author = records.peer_id, authors[node]
            for r in range(rounds):
                rows = {family: table.rows.get((family, r), {}).get(author) for family in ("commits", "votes", "results")}
                if rows["commits"] is not None:
                    records.publish_commit(r, rows["commits"].model_copy(update={"peer_id": me}))
                if rows["votes"] is not None:
                    records.publish_votes(r, rows["votes"].model_copy(update={"voter": me}))
                if rows["results"] is not None:
                    records.publish_result(r, rows["results"].model_copy(update={"peer_id": me}))

        started = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(publish, range(3)))
        publish_s = time.monotonic() - started
        reader = nodes[3][1]
        started = time.monotonic()
        found = 0
        for r in range(rounds):
            found += len(reader.results(r)) + len(reader.votes(r)) + len(reader.commits(r))
        read_s = time.monotonic() - started
    finally:
        for dht, _ in reversed(nodes):
            dht.shutdown()  # type: ignore[attr-defined]
    return {"records_read": found, "records_expected": 9 * rounds, "read_seconds": round(read_s, 2),
            "read_ms_per_round": round(1000 * read_s / max(1, rounds), 1), "publish_seconds": round(publish_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=5, help="inner steps each peer trains per round")
    parser.add_argument("--dht", action="store_true",
                        help="also time reading every round's records from real DHT nodes (p2pd on 127.0.0.1)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = preset(args.preset)
    with tempfile.TemporaryDirectory(prefix="swarmtrain-replay-") as tmp:
        peers, clock, table = memory_swarm(Path(tmp), config, ["a", "b", "c", "late"],
                                       keep_payload_rounds=args.rounds + 1)
        *early, late = peers
        started = time.monotonic()
        for r in range(args.rounds):
            lockstep_round(early, clock, r, before=args.steps, after=0)
        played_s = time.monotonic() - started
        target = early[0].state
        started = time.monotonic()
        caught = late.sync.catch_up(args.rounds, late.state)
        replay_s = time.monotonic() - started
        verified = (caught.version, caught.checksum) == (target.version, target.checksum)
        commits = late.ctx.store.lineage(caught.version.hex())
        merged = sum(len(c.accepted) for c in commits)
        store_bytes = sum(f.stat().st_size for f in (Path(tmp) / "late").rglob("*") if f.is_file())
        network = dht_reads(table, args.rounds, Path(tmp)) if args.dht else None
    doc = {
        "benchmark": "replay",
        "command": command("replay.py", argv),
        "preset": args.preset, "task": config.task, "peers": len(early), "rounds": args.rounds,
        "parameters": sum(t.numel() for t in target.params.values()),
        "codec": {"density": config.codec.density, "bits": config.codec.bits},
        "verified": verified, "rounds_replayed": len(commits) - 1, "updates_merged": merged,
        "replay_seconds": round(replay_s, 2),
        "replay_ms_per_round": round(1000 * replay_s / max(1, args.rounds), 1),
        "play_seconds": round(played_s, 1),
        "joiner_disk_bytes": store_bytes,
        "dht": network,
        "machine": machine(),
    }
    emit(doc, args.out)
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
