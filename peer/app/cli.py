"""The ``swarmtrain`` command line.

Every subcommand turns bad input into one line on stderr and exit code 2 (usage) or 1
(runtime failure) — never a traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from swarmtrain.peer.config import AVERAGE, DENSE, PRESETS, ConfigError, OuterConfig, SwarmConfig, preset
from swarmtrain.peer.training.faults import FAULT_MODES, FaultError
from swarmtrain.peer.training.tasks.base import TaskError

def _runtime_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the world's, not a bug: one line for the user, exit code 1."""
    from swarmtrain.dht import BootstrapError, DHTTimeoutError, IdentityError
    from swarmtrain.peer.node import JoinError
    from swarmtrain.peer.store.versions import StoreError
    from swarmtrain.peer.training.trainer import DeviceError
    from swarmtrain.peer.training.worker import WorkerError
    return (BootstrapError, DHTTimeoutError, IdentityError, JoinError, StoreError, DeviceError, WorkerError)


if TYPE_CHECKING:
    from swarmtrain.peer.round.simulate import RoundReport
    from swarmtrain.peer.store.versions import VersionStore


class UsageError(ValueError):
    """A flag value that cannot work; printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _add_swarm_options(parser: argparse.ArgumentParser) -> None:
    """Flags that shape the swarm's shared config (task, preset, codec)."""
    parser.add_argument("--task", default=None,
                        help="built-in task (stdlib-lm, synthetic) or module:function (default: stdlib-lm)")
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="smoke: tiny and fast, for checks; demo: a few minutes; small: a bigger model")
    parser.add_argument("--density", type=float, default=None, help="top-k density per chunk, (0, 1]")
    parser.add_argument("--bits", type=int, default=None, help="value bits: 2, 4, 8 or 32")
    parser.add_argument("--inner-steps", type=_positive_int, default=None, help="the most local AdamW steps per round (H)")
    parser.add_argument("--uncompressed", action="store_true",
                        help="send dense fp32 updates merged by their plain mean (the presets' default)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the initial model and data")


def swarm_config_from_args(args: argparse.Namespace, default_preset: str) -> SwarmConfig:
    """Build the shared config: preset, then flag overrides; raises ConfigError on bad values."""
    config = preset(args.preset or default_preset)
    if args.task:
        config = config.replace(task=args.task)
    if args.seed is not None:
        config = config.replace(seed=args.seed)
    if args.inner_steps is not None:
        config = config.replace(train=dataclasses.replace(config.train, inner_steps=args.inner_steps))
    if args.uncompressed:
        config = config.replace(codec=dataclasses.replace(DENSE, chunk=config.codec.chunk), outer=AVERAGE)
    if args.density is not None or args.bits is not None:
        config = config.replace(codec=dataclasses.replace(
            config.codec,
            density=config.codec.density if args.density is None else args.density,
            bits=config.codec.bits if args.bits is None else args.bits,
        ))
        if config.codec.compressed and config.outer == AVERAGE:
            # A compressing codec needs error feedback, and the SparseLoCo step that
            # uses it as momentum (a plain mean of top-k updates drops what they leave).
            config = config.replace(outer=OuterConfig())
    return config


def cmd_simulate(args: argparse.Namespace) -> int:
    import torch

    from swarmtrain.peer.round.simulate import Simulation
    from swarmtrain.peer.app.terminal import print_round, print_summary, simulation_header
    from swarmtrain.peer.training.trainer import resolve_device

    torch.set_num_threads(args.threads)
    config = swarm_config_from_args(args, default_preset="demo")
    sim = Simulation(config, peers=args.peers, fault=args.fault, device=resolve_device(args.device),
                     overlap=args.overlap)
    if args.json:
        reports = sim.run(args.rounds, on_round=lambda r: print(json.dumps(_report_dict(r)), flush=True))
        return 0 if reports else 1
    print(simulation_header(config, args.peers, args.fault, sim.validation_loss()))
    reports = sim.run(args.rounds, on_round=print_round)
    print_summary(reports, fault_peer=sim.peers[-1].name if args.fault else None)
    return 0


def _report_dict(report: "RoundReport") -> dict[str, object]:
    data: dict[str, object] = dataclasses.asdict(report)
    data["accepted"], data["rejected"] = report.accepted, report.rejected
    return data


_SWARM_FLAGS = ("task", "preset", "density", "bits", "inner_steps", "seed")


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="where local training runs: auto (a CUDA GPU if torch sees one), cpu, cuda, cuda:N; "
                             "merges and votes always run on the CPU")


def _digest(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise argparse.ArgumentTypeError(f"a genesis digest is 64 lowercase hex characters, got {text!r}")
    return text


def _insisted_config(args: argparse.Namespace) -> SwarmConfig | None:
    """The settings a joining peer asked for explicitly (None: adopt the swarm's genesis)."""
    explicit = args.uncompressed or any(getattr(args, name) is not None for name in _SWARM_FLAGS)
    return swarm_config_from_args(args, default_preset="demo") if explicit else None


def _sigterm_handler(main_pid: int) -> Callable[[int, object], None]:
    """SIGTERM ends the peer like Ctrl-C (leave the DHT, stop serving, release the data dir).

    hivemind's DHT child is forked and inherits the handler; there SIGTERM keeps its
    default meaning (end the process) instead of raising inside the child's event loop.
    """
    import signal

    def handle(signum: int, _frame: object) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    return handle


def cmd_join(args: argparse.Namespace) -> int:
    import signal

    import torch

    from swarmtrain.peer.node import Node, NodeOptions
    from swarmtrain.peer.training.trainer import resolve_device

    resolve_device(args.device)  # a wrong --device fails here, before a DHT node starts
    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid()))
    insisted = _insisted_config(args)
    options = NodeOptions(
        swarm=args.swarm, data_dir=Path(args.data_dir or f"swarm-data/{args.swarm}"),
        initial_peers=tuple(args.initial_peers or ()), host=args.host, port=args.port,
        rounds=args.rounds, fault=args.fault, config=insisted,
        new_swarm_config=insisted or swarm_config_from_args(args, default_preset="demo"),
        start_delay=args.start_delay,
        address_file=Path(args.address_file) if args.address_file else None,
        device=args.device, genesis_digest=args.genesis, trust_states=args.trust_state,
        announce=lambda line: print(line, flush=True),
    )
    node = Node(options)
    try:
        node.run()
    finally:
        node.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from swarmtrain.peer.app.demo import run_demo

    return run_demo(peers=args.peers, rounds=args.rounds, preset=args.preset or "demo",
                    root=Path(args.data_dir), fault=args.fault)


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.live import Live

    from swarmtrain.peer.app.status import SwarmObserver, render

    observer = SwarmObserver(args.swarm, args.initial_peers)
    try:
        if args.json:
            print(json.dumps(observer.snapshot().to_dict(), indent=2))
            return 0
        console = Console()
        if not args.watch:
            console.print(render(observer.snapshot()))
            return 0
        with Live(render(observer.snapshot()), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(2.0)
                live.update(render(observer.snapshot()))
    finally:
        observer.close()


def _open_store(data_dir: str) -> "VersionStore":
    from swarmtrain.peer.store.versions import VersionStore

    path = Path(data_dir) / "versions"
    if not path.is_dir():
        raise UsageError(f"{data_dir} holds no versions (no {path}); pass the --data-dir a peer ran with")
    return VersionStore(path, read_only=True)


def cmd_log(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swarmtrain.peer.app.terminal import render_history

    store = _open_store(args.data_dir)
    try:
        history = store.history()
    finally:
        store.close()
    if args.json:
        print(json.dumps([c.to_dict() for c in history], indent=2))
    else:
        Console().print(render_history(history))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = _open_store(args.data_dir)
    try:
        out = store.export(args.version, Path(args.out))
    finally:
        store.close()
    print(f"wrote {out}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swarmtrain")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmtrain",
        description="Train one model together over a peer-to-peer swarm.",
    )
    parser.add_argument("--version", action="version", version=f"swarmtrain {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser("simulate", help="K virtual peers in one process run whole rounds (no network)")
    sim.add_argument("--peers", type=_positive_int, default=4)
    sim.add_argument("--rounds", type=_positive_int, default=8)
    sim.add_argument("--fault", choices=list(FAULT_MODES), default=None,
                     help="make the last peer misbehave: " + "; ".join(f"{k}: {v}" for k, v in FAULT_MODES.items()))
    sim.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    sim.add_argument("--overlap", type=_share, default=0.0, metavar="F",
                     help="share of each round's steps taken while the round is exchanged, carried onto "
                          "the next version, as networked peers do (default 0: classic DiLoCo)")
    _add_device_option(sim)
    sim.add_argument("--json", action="store_true", help="one JSON object per round instead of the table")
    _add_swarm_options(sim)
    sim.set_defaults(func=cmd_simulate)

    join = sub.add_parser("join", help="run a peer: start a swarm, or join one with --initial-peers")
    join.add_argument("--swarm", default="demo", help="swarm name (default: demo)")
    join.add_argument("--initial-peers", nargs="+", metavar="MADDR",
                      help="multiaddrs of peers already in the swarm (none: start a new swarm)")
    join.add_argument("--data-dir", default=None, help="identity, versions and checkpoints (default: swarm-data/SWARM)")
    join.add_argument("--rounds", type=_positive_int, default=None, help="leave after this many rounds")
    join.add_argument("--fault", choices=list(FAULT_MODES), default=None,
                      help="misbehave on purpose so the swarm rejects this peer's updates")
    join.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    join.add_argument("--port", type=int, default=0, help="TCP port to listen on (0: any free port)")
    join.add_argument("--address-file", default=None, metavar="PATH",
                      help="write the addresses others join with to PATH, one per line, once ready")
    join.add_argument("--start-delay", type=float, default=0.0,
                      help="when starting a swarm: round 0 begins this many seconds from now")
    join.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    join.add_argument("--genesis", type=_digest, default=None, metavar="DIGEST",
                      help="join only the genesis with this digest (printed by every peer as 'genesis ...')")
    join.add_argument("--trust-state", action="store_true",
                      help="when the rounds this peer missed cannot be replayed (their records or payloads are "
                           "gone), download the newest version from the peers that publish it and take it on "
                           "their word (by default a peer adopts only versions it recomputed itself)")
    _add_device_option(join)
    _add_swarm_options(join)
    join.set_defaults(func=cmd_join)

    demo = sub.add_parser("demo", help="a local swarm of N peer processes on 127.0.0.1, shown live")
    demo.add_argument("--peers", type=_positive_int, default=3)
    demo.add_argument("--rounds", type=_positive_int, default=8)
    demo.add_argument("--preset", choices=PRESETS, default="demo")
    demo.add_argument("--fault", choices=list(FAULT_MODES), default=None, help="make the last peer misbehave")
    demo.add_argument("--data-dir", default="swarm-data/local-demo", help="where the peers keep data and logs")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="one snapshot of a swarm, read from its DHT records")
    status.add_argument("--swarm", default="demo", help="swarm name (default: demo)")
    status.add_argument("--initial-peers", nargs="+", metavar="MADDR", required=True,
                        help="multiaddr of any peer of the swarm")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    status.add_argument("--watch", action="store_true", help="keep the view updated until Ctrl-C")
    status.set_defaults(func=cmd_status)

    log_cmd = sub.add_parser("log", help="the version history this peer keeps")
    log_cmd.add_argument("--data-dir", default="swarm-data/demo", help="the peer's data dir")
    log_cmd.add_argument("--json", action="store_true")
    log_cmd.set_defaults(func=cmd_log)

    export = sub.add_parser("export", help="write a kept version's parameters to a .safetensors file")
    export.add_argument("version", help="version id or a unique prefix of one")
    export.add_argument("out", help="output path, e.g. model.safetensors")
    export.add_argument("--data-dir", default="swarm-data/demo", help="the peer's data dir")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # hivemind logs every identity check at INFO; peers print their own progress lines.
    # Read when hivemind is first imported (inside the commands), so set it here.
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, FaultError, TaskError, UsageError) as error:
        print(f"swarmtrain: error: {error}", file=sys.stderr)
        return 2
    except _runtime_errors() as error:
        print(f"swarmtrain: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("swarmtrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
