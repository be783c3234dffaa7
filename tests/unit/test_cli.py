"""CLI: user mistakes give one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmtrain.peer.app.cli import main
from swarmtrain.peer.node import _config_diff
from swarmtrain.peer.config import DENSE, preset

PEER = "QmXfzsrJ8n8o2gGqXbXvDJHnS6PNtEh5Evu7Wrqk1FNbAb"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_dead_bootstrap_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "join", "--data-dir", str(tmp_path), "--initial-peers",
                     f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}")
    assert code == 1
    assert err.startswith("swarmtrain: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_malformed_multiaddr_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "join", "--data-dir", str(tmp_path), "--initial-peers", "not-an-address")
    assert code == 1 and err.startswith("swarmtrain: error:") and err.count("\n") == 1


def test_bad_settings_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "simulate", "--density", "0", "--rounds", "1")
    assert code == 2 and "codec.density" in err
    code, err = _run(capsys, "simulate", "--task", "nosuchmodule:make", "--rounds", "1")
    assert code == 2 and "nosuchmodule" in err


@pytest.mark.parametrize("command", ["join", "simulate"])
def test_a_device_that_does_not_exist_is_one_line(command: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--data-dir", str(tmp_path)] if command == "join" else ["--rounds", "1"]
    code, err = _run(capsys, command, "--device", "tpu", *extra)
    assert code == 1 and err.startswith("swarmtrain: error: --device 'tpu'") and err.count("\n") == 1
    assert not (tmp_path / "identity.key").exists()  # refused before any set-up


def test_log_without_versions_says_which_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "log", "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and "holds no versions" in err


def test_unknown_flag_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["join", "--no-such-flag"])
    assert info.value.code == 2


def test_config_diff_names_each_difference() -> None:
    a = preset("smoke").to_dict()
    b = preset("demo").to_dict()
    diffs = _config_diff(a, b)
    assert any(d.startswith("train.batch_size: yours 8, swarm 16") for d in diffs)
    assert _config_diff(a, a) == []


def test_compressing_flags_bring_the_sparseloco_step_and_uncompressed_the_plain_mean() -> None:
    from swarmtrain.peer.app.cli import build_parser, swarm_config_from_args
    from swarmtrain.peer.config import AVERAGE

    def config(*flags: str):  # type: ignore[no-untyped-def]
        return swarm_config_from_args(build_parser().parse_args(["simulate", *flags]), default_preset="demo")

    assert config().codec == DENSE and config().outer == AVERAGE
    compressed = config("--density", "0.015", "--bits", "2")
    assert compressed.codec.compressed and compressed.outer.kind == "sparseloco" and compressed.outer.ef_decay > 0
    assert config("--density", "0.015", "--bits", "2", "--uncompressed").outer == compressed.outer  # flags win
    assert config("--preset", "smoke", "--uncompressed").codec == DENSE


def test_version_names_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from swarmtrain.peer.app.cli import build_parser
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"swarmtrain {version('swarmtrain')}"


def test_fetch_base_without_a_hugging_face_task_is_a_usage_error(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "join", "--data-dir", str(tmp_path), "--fetch-base")
    assert code == 2 and "--fetch-base is for Hugging Face models" in err and err.count("\n") == 1
    assert not (tmp_path / "identity.key").exists()  # refused before any set-up
