"""``--config FILE`` and ``--print-config``: keys from the parser, values through the flags' code."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from swarmtrain.peer.app import configfile
from swarmtrain.peer.app.cli import build_parser, main


def _sub(name: str) -> argparse.ArgumentParser:
    sub = configfile.subcommand(build_parser(), [name])
    assert sub is not None
    return sub


def _args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    configfile.prepare(parser, argv)
    return parser.parse_args(argv)


def test_keys_are_every_flag_of_the_subcommand_spelled_as_the_flag() -> None:
    keys = configfile.config_keys(_sub("join"))
    assert {"inner-steps", "initial-peers", "preset", "uncompressed", "data-dir", "device"} <= set(keys)
    assert not {"config", "print-config", "help", "inner_steps"} & set(keys)
    # A flag added later is a key with nothing registered (other subcommands, too).
    parser = argparse.ArgumentParser()
    parser.add_argument("--metrics-port", type=int)
    assert list(configfile.config_keys(parser)) == ["metrics-port"]
    assert "initial-peers" in configfile.config_keys(_sub("status"))
    assert "peers" in configfile.config_keys(_sub("simulate"))


def test_file_sets_values_through_the_flags_types_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "swarm.toml"
    path.write_text('inner-steps = 50\npreset = "smoke"\ninitial-peers = ["/ip4/1.2.3.4/tcp/5"]\n'
                    'uncompressed = true\nstart-delay = 3\nswarm = "lab"\n')
    args = _args(["join", "--config", str(path), "--swarm", "other"])
    assert args.inner_steps == 50 and args.preset == "smoke" and args.uncompressed is True
    assert args.initial_peers == ["/ip4/1.2.3.4/tcp/5"]
    assert args.start_delay == 3.0 and isinstance(args.start_delay, float)  # the flag's type ran
    assert args.swarm == "other"  # the command line wins
    assert _args(["join", f"--config={path}", "--inner-steps", "7"]).inner_steps == 7


def test_required_flag_may_come_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "watch.toml"
    path.write_text('initial-peers = ["/ip4/127.0.0.1/tcp/1"]\nwatch = true\n')
    args = _args(["status", "--config", str(path)])
    assert args.initial_peers == ["/ip4/127.0.0.1/tcp/1"] and args.watch is True


@pytest.mark.parametrize(("text", "message"), [
    ("inner_stepz = 5\n", "unknown key 'inner_stepz' (valid: swarm, initial-peers,"),
    ("inner_steps = 5\n", "unknown key 'inner_steps'; write it as 'inner-steps'"),
    ("inner-steps = 0\n", "bad value for key 'inner-steps': must be >= 1, got 0"),
    ('inner-steps = "many"\n', "bad value for key 'inner-steps': expected a whole number, got 'many'"),
    ('preset = "huge"\n', "bad value for key 'preset': 'huge' is not one of smoke, demo, small"),
    ("uncompressed = 1\n", "bad value for key 'uncompressed': expected true or false, got an integer"),
    ('initial-peers = "/ip4/1"\n', "bad value for key 'initial-peers': expected a list"),
    ("port = true\n", "bad value for key 'port': expected a value like the flag takes, got a boolean"),
    ('genesis = "abc"\n', "bad value for key 'genesis': a genesis digest is 64 lowercase hex"),
    ("[join]\nseed = 1\n", "unknown key 'join'"),
    ("seed = \n", "not valid TOML"),
])
def test_bad_files_get_one_line_errors_naming_file_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    path = tmp_path / "swarm.toml"
    path.write_text(text)
    assert main(["join", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"swarmtrain: error: {path}: ") and message in err, err
    assert err.count("\n") == 1


def test_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["join", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: cannot read the config file" in capsys.readouterr().err


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["join", "--preset", "smoke", "--inner-steps", "9", "--density", "0.05", "--uncompressed",
            "--initial-peers", "/ip4/1.2.3.4/tcp/5", '/ip4/5.6.7.8/tcp/9/p2p/Qm"x', "--start-delay", "2.5",
            "--swarm", "lab", "--data-dir", "dir with spaces/ü", "--trust-version", f"{'ab' * 32}:{'cd' * 32}"]
    assert main([*argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert 'inner-steps = 9\n' in printed and "uncompressed = true\n" in printed and "config" not in printed
    path = tmp_path / "printed.toml"
    path.write_text(printed)
    first, again = _args(argv), _args(["join", "--config", str(path)])
    settings = {k: v for k, v in vars(first).items() if k not in ("config", "func")}
    assert settings == {k: v for k, v in vars(again).items() if k not in ("config", "func")}
    # Printing the file's settings again gives the same file.
    assert main(["join", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == printed


def test_print_config_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    # A real join would need a DHT; --print-config returns at once with exit code 0.
    assert main(["status", "--initial-peers", "/ip4/127.0.0.1/tcp/1", "--print-config"]) == 0
    assert 'initial-peers = ["/ip4/127.0.0.1/tcp/1"]' in capsys.readouterr().out


def test_toml_writer_values() -> None:
    text = configfile.to_toml({"a": 1e-05, "b": float("inf"), "c": 'q"\\\n', "d": [1, 2], "e": False})
    import tomllib
    assert tomllib.loads(text) == {"a": 1e-05, "b": float("inf"), "c": 'q"\\\n', "d": [1, 2], "e": False}


def test_repeatable_flags_take_lists(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", action="append", type=int)
    assert configfile.defaults_from(parser, {"tag": [1, "2"]}, "f.toml") == {"tag": [1, 2]}
    with pytest.raises(configfile.ConfigFileError, match="f.toml: bad value for key 'tag': expected a list"):
        configfile.defaults_from(parser, {"tag": 1}, "f.toml")
