"""Helpers for swarm tests: real `swarmtrain join` processes and a plain `hivemind-dht` node.

Every process is started in its own process group and ended by its id (the group), so
its DHT child and p2pd end with it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from swarmtrain.peer.config import preset
from swarmtrain.peer.app.launch import PeerProcess, start_peer, stop_group
from swarmtrain.peer.store.versions import VersionCommit, VersionStore
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.peer.training.trainer import evaluate_loss

SMOKE = ["--preset", "smoke"]
HIVEMIND_ADDRESS = re.compile(r"--initial_peers (/ip4/127\.0\.0\.1/\S+)")
ROUND_LINE = re.compile(r"^round (\d+): version ([0-9a-f]{12})", re.MULTILINE)
METRICS_LINE = re.compile(r"^metrics on (http://\S+)$", re.MULTILINE)


def versions_by_round(log: str) -> dict[str, str]:
    """The version a peer's log says each round ended on (short ids), by round number."""
    return dict(ROUND_LINE.findall(log))


class Swarm:
    """Tracks every process a test starts and ends all of them, whatever happens."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.peers: dict[str, PeerProcess] = {}
        self._others: list[subprocess.Popen[bytes]] = []

    def start(self, label: str, *args: str, data_dir: str | None = None,
              prefix: tuple[str, ...] = ()) -> PeerProcess:
        proc = start_peer(label, self.root / (data_dir or label), ["--swarm", self.name, *args], prefix=prefix)
        self.peers[label] = proc
        return proc

    def start_plain_hivemind(self) -> str:
        """A stock `hivemind-dht` node (no swarmtrain code) as bootstrap; returns its address."""
        # Beside this interpreter (a venv's bin/ need not be on PATH), else on PATH.
        beside = Path(sys.executable).parent / "hivemind-dht"
        exe = str(beside) if beside.exists() else shutil.which("hivemind-dht")
        assert exe is not None, "hivemind-dht is installed with hivemind"
        log_path = self.root / "hivemind-dht.log"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([exe, "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--refresh_period", "5"],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._others.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = HIVEMIND_ADDRESS.search(log_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.2)
        raise AssertionError("hivemind-dht printed no address:\n" + log_path.read_text())

    def start_bootstrap(self, label: str, *args: str) -> str:
        """`swarmtrain bootstrap` (the swarm's validating entry point) on 127.0.0.1; returns
        its address once it prints one. Tracked like a peer (wait_for_line, stop_all)."""
        data_dir = self.root / label
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{label}.log"
        command = [sys.executable, "-m", "swarmtrain.peer.app.cli", "bootstrap", "--swarm", self.name,
                   "--data-dir", str(data_dir), *args]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.peers[label] = PeerProcess(name=label, data_dir=data_dir, log_path=log_path, process=process)
        return self.peers[label].address()

    def metrics_url(self, label: str, timeout: float = 60.0) -> str:
        """The /metrics URL a process started with --metrics-port printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = METRICS_LINE.search(self.peers[label].log_text())
            if match:
                return match.group(1)
            assert self.peers[label].running(), self.peers[label].log_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"{label} printed no metrics URL:\n{self.peers[label].log_text()[-3000:]}")

    def wait(self, *labels: str, timeout: float) -> None:
        """Wait for these peers to exit; fail with their logs if one does not in time or fails."""
        deadline = time.monotonic() + timeout
        for label in labels:
            proc = self.peers[label]
            try:
                proc.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{label} still running after {timeout}s:\n{proc.log_text()[-3000:]}") from None
            assert proc.process.returncode == 0, f"{label} exited {proc.process.returncode}:\n{proc.log_text()[-3000:]}"

    def wait_for_line(self, label: str, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.peers[label].log_text():
                return
            time.sleep(0.3)
        raise AssertionError(f"{label} never printed {text!r}:\n{self.peers[label].log_text()[-3000:]}")

    def stop_all(self) -> None:
        for proc in self.peers.values():
            proc.stop()
        for other in self._others:
            stop_group(other)


def free_port() -> int:
    """A TCP port nothing listens on now (for servers that need one named up front)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def history(data_dir: Path) -> list[VersionCommit]:
    with VersionStore(data_dir / "versions", read_only=True) as store:
        return store.history()


def by_round(data_dir: Path) -> dict[int, VersionCommit]:
    """Versions keyed by the round that produced them (every peer saves the genesis first)."""
    return {c.round: c for c in history(data_dir)[1:]}


def heldout_loss(data_dir: Path, version: str) -> float:
    """Loss of a stored version on fixed held-out batches of the smoke task."""
    config = preset("smoke")
    task = load_task(config)
    with VersionStore(data_dir / "versions", read_only=True) as store:
        params, _ = store.load(version)
    torch.set_num_threads(1)
    return evaluate_loss(task, task.build_model(), task.heldout_batches(8, 4242), params=params)
