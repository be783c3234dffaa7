"""How alike are honest updates? The evidence behind the near-copy threshold.

Prints ONE JSON document (and writes it with --out). K honest simulated peers of the demo
preset train for some rounds; every merged update is decoded and compared (cosine of the
flattened update, and the share of shared nonzero positions) with the other peers'
updates of the same round, with the other peers' updates of the round before, and with
the same peer's own update of the round before. A near-copy threshold must sit above
every honest pair: the checkers reject updates at or above ``NEAR_COPY_COSINE`` against
last round's merged updates or another update of the round.

    python benchmarks/similarity.py --out benchmarks/results/similarity.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from report import emit
from torch import Tensor

from swarmtrain.peer.config import CodecConfig, OuterConfig, SwarmConfig, preset
from swarmtrain.peer.round import simulate
from swarmtrain.peer.round.copies import NEAR_COPY_COSINE, cosine
from swarmtrain.peer.round.validity import open_update


def _flat(update: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([update[name].flatten().to(torch.float64) for name in sorted(update)])


def _overlap(a: Tensor, b: Tensor) -> float:
    sa, sb = a != 0, b != 0
    return float((sa & sb).sum()) / max(1, int(max(sa.sum(), sb.sum())))


def measure(config: SwarmConfig, peers: int, rounds: int) -> dict[str, object]:
    """Pairwise similarity of the merged updates of ``rounds`` simulated rounds."""
    captured: list[dict[bytes, Tensor]] = []
    merge = simulate.merge_round

    def recording_merge(params, parent, accepted, outer, *, codec, clip_ratio):  # type: ignore[no-untyped-def]
        captured.append({d: _flat(open_update(p, params=params, codec=codec)) for d, (_, p) in accepted.items()})
        return merge(params, parent, accepted, outer, codec=codec, clip_ratio=clip_ratio)

    simulate.merge_round = recording_merge  # the module's one merge, observed, not changed
    try:
        reports = simulate.Simulation(config, peers=peers).run(rounds)
    finally:
        simulate.merge_round = merge
    by_round = [{o.peer: updates[d] for o in report.outcomes for d in updates if d.hex().startswith(o.digest)}
                for report, updates in zip(reports, captured)]
    pairs: dict[str, list[tuple[float, float]]] = {"same_round": [], "vs_others_last_round": [],
                                                   "vs_own_last_round": []}
    for r, now in enumerate(by_round):
        for a, b in itertools.combinations(sorted(now), 2):
            pairs["same_round"].append((cosine(now[a], now[b]), _overlap(now[a], now[b])))
        for a, b in itertools.product(now, by_round[r - 1] if r else {}):
            key = "vs_own_last_round" if a == b else "vs_others_last_round"
            pairs[key].append((cosine(now[a], by_round[r - 1][b]), _overlap(now[a], by_round[r - 1][b])))
    return {key: {"pairs": len(xs), "cosine_max": round(max(c for c, _ in xs), 3),
                  "cosine_mean": round(sum(c for c, _ in xs) / len(xs), 3),
                  "overlap_max": round(max(o for _, o in xs), 3)}
            for key, xs in pairs.items() if xs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[20, 50, 150])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = preset("demo")
    codecs = {
        "dense fp32 (the presets' default)": base,
        "1.5 % / 2 bits, SparseLoCo": base.replace(
            codec=CodecConfig(density=0.015, bits=2, chunk=base.codec.chunk), outer=OuterConfig(lr=2.0)),
    }
    rows = []
    for (name, config), steps in itertools.product(codecs.items(), args.inner_steps):
        config = config.replace(train=dataclasses.replace(config.train, inner_steps=steps))
        rows.append({"codec": name, "inner_steps": steps, **measure(config, args.peers, args.rounds)})
        print(rows[-1], file=sys.stderr, flush=True)
    emit({"benchmark": "similarity",
          "command": "python benchmarks/similarity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
          "preset": "demo", "peers": args.peers, "rounds": args.rounds, "near_copy_cosine": NEAR_COPY_COSINE,
          "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
