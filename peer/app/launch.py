"""Starting and ending local peer processes (``swarmtrain demo`` and the integration tests).

Each peer runs ``swarmtrain join`` in its own process group (``start_new_session``), so
ending the group also ends its DHT child and p2pd daemon (docs/hivemind.md: killing only
the main process leaves them running, and a restart then fails with "identity taken").
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ADDRESS_LINE = re.compile(r"join with: --initial-peers (\S+)")


class LaunchError(RuntimeError):
    """A local peer failed to start; the message includes the end of its log."""


@dataclass
class PeerProcess:
    name: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def address(self, timeout: float = 60.0) -> str:
        """The multiaddr the peer printed, waiting for it to start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = ADDRESS_LINE.search(self.log_text())
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                raise LaunchError(f"peer {self.name} exited with code {self.process.returncode}:\n"
                                  + self.log_text()[-2000:])
            time.sleep(0.2)
        raise LaunchError(f"peer {self.name} printed no address within {timeout:.0f}s:\n" + self.log_text()[-2000:])

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        return stop_group(self.process, sig, grace)


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
    """Signal a process started with ``start_new_session`` and its whole group; SIGKILL the
    group if the leader outlives ``grace``. Returns the leader's exit code."""
    if process.poll() is None:
        _signal_group(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # The group may still hold the DHT child and p2pd after the leader exited.
    _signal_group(process.pid, signal.SIGKILL)
    return process.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_peer(name: str, data_dir: Path, args: Sequence[str], *, threads: int = 1,
               prefix: Sequence[str] = ()) -> PeerProcess:
    """Start ``swarmtrain join ARGS --data-dir DATA_DIR`` with its output in DATA_DIR/../NAME.log.

    ``prefix`` is a command that execs the peer, such as ``ip netns exec NS`` (tests).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [*prefix, sys.executable, "-m", "swarmtrain.peer.app.cli", "join", "--data-dir", str(data_dir),
               "--threads", str(threads), *args]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    return PeerProcess(name=name, data_dir=data_dir, log_path=log_path, process=process)
