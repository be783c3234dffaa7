"""``swarmtrain demo``: a local swarm of real peer processes on 127.0.0.1, shown live.

Each peer is a separate ``swarmtrain join`` process with its own identity, DHT node and
p2pd daemon; the demo itself only watches the swarm's records through a client-mode DHT
node, like ``swarmtrain status --watch``, and ends every process it started.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from swarmtrain.peer.app.launch import PeerProcess, start_peer
from swarmtrain.peer.app.status import SwarmObserver, SwarmSnapshot, render

# Round 0 starts this long after the first peer is up, so the others can join it.
START_DELAY_S = 25.0


def render_demo(snapshot: SwarmSnapshot | None, peers: list[PeerProcess]) -> Group:
    """The live view: the swarm table, then each peer's latest log line."""
    lines = Text()
    for peer in peers:
        tail = [line for line in peer.log_text().splitlines() if line.startswith(("round", "synced", "catching"))]
        state = "running" if peer.running() else f"exited ({peer.process.returncode})"
        lines.append(f"{peer.name} [{state}]: {tail[-1] if tail else 'starting…'}\n")
    parts = [render(snapshot)] if snapshot is not None else [Text("waiting for the swarm's records…")]
    return Group(*parts, lines)


def run_demo(*, peers: int, rounds: int, preset: str, root: Path, fault: str | None,
             console: Console | None = None) -> int:
    console = console or Console()
    swarm = "demo-local"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("peer*"):
        if old.is_dir():
            shutil.rmtree(old)  # a demo is a new swarm each time: old identities' genesis pins would refuse it
        else:
            old.unlink()
    common = ["--swarm", swarm, "--rounds", str(rounds), "--preset", preset]
    procs: list[PeerProcess] = []
    observer: SwarmObserver | None = None
    try:
        first = start_peer("peer0", root / "peer0", [*common, "--start-delay", str(START_DELAY_S)])
        procs.append(first)
        address = first.address()
        console.print(f"peer0 started the swarm; others join with --initial-peers {address}")
        for i in range(1, peers):
            extra = ["--fault", fault] if fault and i == peers - 1 else []
            procs.append(start_peer(f"peer{i}", root / f"peer{i}", [*common, "--initial-peers", address, *extra]))
        observer = SwarmObserver(swarm, [address])
        snapshot = None
        with Live(render_demo(None, procs), console=console, refresh_per_second=2) as live:
            while any(p.running() for p in procs):
                try:
                    snapshot = observer.snapshot()
                except TimeoutError:
                    pass
                live.update(render_demo(snapshot, procs))
                time.sleep(2.0)
            # The last snapshot above was read while the peers lingered after their final
            # heartbeats (NodeOptions.linger_s), so it shows their final versions.
            live.update(render_demo(snapshot, procs))
        codes = [p.process.returncode for p in procs]
        console.print(f"logs and data: {root.resolve()} (peer logs: peerN.log; history: "
                      f"swarmtrain log --data-dir {root / 'peer0'})")
        return 0 if all(code == 0 for code in codes) else 1
    finally:
        if observer is not None:
            observer.close()
        for proc in procs:
            proc.stop()
