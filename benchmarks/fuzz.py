"""Coverage-guided fuzzing of everything that parses bytes from other peers (out of CI).

Targets, and the one exception type each may raise (anything else is "untyped", a bug):

- ``codec``:   ``read_update`` on an update payload            -> ProtocolError
- ``framing``: ``decode_request``, ``decode_response`` and a ``BlobReceiver`` fed a
               sequence of frames cut from the input            -> ProtocolError
- ``records``: the DHT validator on an entry of every record family (genesis, peers,
               commits, votes, results)                         -> nothing (it returns a bool)
- ``state``:   ``unpack_state`` and the check that a state is the model -> StoreError

Each target runs in its own process under atheris (libFuzzer), seeded with valid inputs,
so a crash or a runaway allocation in one does not hide the others. The JSON report has
per target: inputs run, seconds, peak memory (max RSS), and the count of each exception
type seen. Usage::

    pip install atheris
    python benchmarks/fuzz.py --runs 250000          # 4 targets x 250,000 = 1 million inputs
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

TARGETS = ("codec", "framing", "records", "state")
REPORT_EVERY = 5_000


def _seeds(target: str) -> list[bytes]:
    """Valid inputs to start mutating from."""
    import torch

    from swarmtrain.protocol import encode_update
    from swarmtrain.protocol.framing import encode_error, encode_header, encode_request

    if target == "codec":
        g = torch.Generator().manual_seed(0)
        tensors = {"a": torch.randn(40, generator=g), "b": torch.randn(3, 5, generator=g)}
        return [encode_update(tensors, density=d, bits=b, chunk=16) for d, b in ((0.1, 2), (0.5, 8), (1.0, 32))]
    if target == "framing":
        return [encode_request("update", "ab" * 32), encode_header(100, 64 * 1024), encode_error("busy", "later")]
    if target == "records":
        import msgpack

        from swarmtrain.dht.testing import sample_commit, sample_genesis, sample_peer, sample_result, sample_votes

        peer, _ = _owner()
        # The first byte picks the family (KeyFamily order: genesis, peers, commits, votes, results).
        records = (sample_genesis(peer, swarm="fuzz"), sample_peer(peer), sample_commit(peer), sample_votes(peer),
                   sample_result(peer))
        return [bytes([i]) + msgpack.packb(rec.to_wire(), use_bin_type=True) for i, rec in enumerate(records)]
    from swarmtrain.peer.store.state import pack_state

    return [pack_state({"w": torch.ones(4, 3), "b": torch.zeros(3)}, {"outer.momentum.w": torch.ones(4, 3)})]


@functools.cache
def _owner() -> tuple[str, bytes]:
    """One identity (peer id, owner marker) for the record entries of a fuzzing process."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from swarmtrain.dht.owner import make_owner_marker, peer_id_from_public_key

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    return peer_id_from_public_key(key), make_owner_marker(key)


def _target(name: str) -> tuple[Callable[[bytes], object], tuple[type[BaseException], ...]]:
    """The function to call on each input, and the exception types it may raise."""
    if name == "codec":
        from swarmtrain.protocol import ProtocolError, read_update

        return (lambda data: read_update(data, max_elements=1 << 16)), (ProtocolError,)
    if name == "framing":
        from swarmtrain.protocol.errors import ProtocolError
        from swarmtrain.protocol.framing import BlobReceiver, decode_request, decode_response

        def framing(data: bytes) -> None:
            for decode in (decode_request, decode_response):
                try:
                    decode(data)
                except ProtocolError:
                    pass
            receiver = BlobReceiver(1 << 16)
            # Frames cut from the input: a length byte, then that many bytes; a frame over
            # the receiver's cap is refused before reading, as the client does.
            at = 0
            while at < len(data):
                frame = data[at + 1: at + 1 + data[at]]
                if len(frame) > receiver.next_frame_cap():
                    return
                receiver.receive_frame(frame)
                at += 1 + data[at]
        return framing, (ProtocolError,)
    if name == "records":
        from hivemind.dht.validation import DHTRecord

        from swarmtrain.dht.keys import KeyFamily, key_id, round_key, static_key
        from swarmtrain.dht.validator import SwarmRecordValidator

        validator = SwarmRecordValidator("fuzz")
        families = list(KeyFamily)
        keys = [key_id(static_key("fuzz", f)) if f in (KeyFamily.GENESIS, KeyFamily.PEERS)
                else key_id(round_key("fuzz", f, 0)) for f in families]
        import msgpack
        _, raw_marker = _owner()
        marker = msgpack.packb(raw_marker, use_bin_type=True)

        def records(data: bytes) -> str | None:
            if not data:
                return None
            key = keys[data[0] % len(keys)]
            subkey = marker if data[0] < 128 else data[1:9]
            ok = validator.validate(DHTRecord(key=key, subkey=subkey, value=data[1:], expiration_time=0.0))
            return "stored" if ok else "refused"
        return records, ()
    from swarmtrain.peer.round.state import state_problem
    from swarmtrain.peer.store.errors import StoreError
    from swarmtrain.peer.store.state import unpack_state

    import torch
    model = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}

    def state(data: bytes) -> None:
        params, extra = unpack_state(data, "fuzz")
        state_problem(params, extra, model)
    return state, (StoreError,)


def run_child(target: str, runs: int, report: Path, corpus: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["swarmtrain"]):
        call, allowed = _target(target)
    for i, seed in enumerate(_seeds(target)):
        (corpus / f"seed{i}").write_bytes(seed)
    counts: Counter[str] = Counter()
    started = time.monotonic()
    done = 0
    crash_dir = report.parent / f"{target}-untyped"

    def write() -> None:
        report.write_text(json.dumps({
            "target": target, "inputs": done, "seconds": round(time.monotonic() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "exceptions": dict(counts), "allowed": [t.__name__ for t in allowed],
            "untyped": sum(n for name, n in counts.items() if name.startswith("UNTYPED ")),
        }))

    def one(data: bytes) -> None:
        nonlocal done
        try:
            outcome = call(data)
            counts[outcome if isinstance(outcome, str) else "(none)"] += 1
        except allowed as error:
            counts[type(error).__name__] += 1
        except Exception as error:  # noqa: BLE001 - the point: count what escapes, keep fuzzing
            counts[f"UNTYPED {type(error).__name__}"] += 1
            crash_dir.mkdir(exist_ok=True)
            (crash_dir / f"{type(error).__name__}-{counts[f'UNTYPED {type(error).__name__}']}.bin").write_bytes(data)
        done += 1
        if done % REPORT_EVERY == 0 or done >= runs:
            write()

    atheris.Setup([sys.argv[0], f"-runs={runs}", "-rss_limit_mb=4096", "-max_len=4096",
                   "-print_final_stats=0", str(corpus)], one)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=250_000, help="inputs per target")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuzz.json"))
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.runs, Path(args.report), Path(args.corpus))
        return 0
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            corpus = Path(tmp) / f"corpus-{target}"
            corpus.mkdir()
            report = Path(tmp) / f"{target}.json"
            started = time.monotonic()
            proc = subprocess.run([sys.executable, __file__, "--child", target, "--runs", str(args.runs),
                                   "--report", str(report), "--corpus", str(corpus)],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
            row: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {"target": target}
            row["exit_code"] = proc.returncode
            row["wall_seconds"] = round(time.monotonic() - started, 1)
            if proc.returncode != 0:
                row["stderr_tail"] = proc.stderr[-2000:]
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    doc = {
        "benchmark": "fuzz",
        "command": "python benchmarks/fuzz.py " + " ".join(sys.argv[1:]),
        "inputs": sum(r.get("inputs", 0) for r in results),
        "untyped": sum(r.get("untyped", 0) for r in results),
        "targets": results,
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0 if doc["untyped"] == 0 and all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
