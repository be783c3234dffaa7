"""``--config FILE``: a subcommand's flags as TOML keys, checked by the flags' own code.

The keys are derived from the subcommand's argparse parser, so every flag, present or
added later, is a config key with nothing to register: flag ``--inner-steps`` is key
``inner-steps`` (the flag's spelling without the dashes; ``inner_steps`` is refused, so
one setting has one name). Values go through the flag's own ``type`` and ``choices``,
so a file is validated by exactly the code that validates the command line, and flags
given on the command line override the file (the file only sets the parser's defaults).

Pure apart from :func:`read_toml`: parser + TOML dict in, defaults (or one-line errors) out.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The flags that choose a file and print one are not settings themselves.
CONFIG_FLAG = "--config"
PRINT_FLAG = "--print-config"
_NOT_KEYS = frozenset({"config", "print-config", "help", "version"})


class ConfigFileError(ValueError):
    """A config file that cannot be used; the one-line message names the file and the key."""


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--print-config`` on one subcommand."""
    parser.add_argument(CONFIG_FLAG, default=None, metavar="FILE",
                        help="read flag values from a TOML file (keys as the flags without '--', "
                             "e.g. inner-steps = 50); flags given here override it")
    parser.add_argument(PRINT_FLAG, action="store_true",
                        help="print the effective settings as TOML (a --config file) and exit")


def config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every optional flag of ``parser`` by its key (its first long option without dashes)."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse exposes no public list of a parser's actions
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        key = longs[0][2:]
        if key not in _NOT_KEYS:
            keys[key] = action
    return keys


def _is_switch(action: argparse.Action) -> bool:
    """A flag that takes no value (store_true / store_false)."""
    return action.nargs == 0


def _is_list(action: argparse.Action) -> bool:
    return action.nargs in ("+", "*") or isinstance(action.nargs, int) or isinstance(action, argparse._AppendAction)


def _convert_one(action: argparse.Action, raw: object) -> Any:
    """One value through the flag's own type and choices (raises ValueError with why)."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"expected a {'string' if action.type is None else 'value'} like the flag takes, "
                         f"got {_toml_type(raw)}")
    converter = action.type if callable(action.type) else str
    try:
        value = converter(str(raw))
    except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
        raise ValueError(str(error) or f"invalid value {raw!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _convert(action: argparse.Action, raw: object) -> Any:
    if _is_switch(action):
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {_toml_type(raw)}")
        # The key says whether the flag is given (a store_false flag then holds False).
        return action.const if raw else not action.const
    if _is_list(action):
        items = raw if isinstance(raw, list) else None
        if items is None:
            raise ValueError(f"expected a list (e.g. [\"a\", \"b\"]), got {_toml_type(raw)}")
        if action.nargs == "+" and not items:
            raise ValueError("expected at least one item")
        return [_convert_one(action, item) for item in items]
    return _convert_one(action, raw)


def _toml_type(raw: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
             dict: "a table"}
    return names.get(type(raw), type(raw).__name__)


def defaults_from(parser: argparse.ArgumentParser, data: Mapping[str, object], source: str) -> dict[str, Any]:
    """``{dest: value}`` for ``parser.set_defaults`` from a parsed TOML file's keys."""
    keys = config_keys(parser)
    out: dict[str, Any] = {}
    for key, raw in data.items():
        action = keys.get(key)
        if action is None:
            hint = f"; write it as {key.replace('_', '-')!r}" if key.replace("_", "-") in keys else ""
            raise ConfigFileError(f"{source}: unknown key {key!r}{hint} (valid: {', '.join(keys)})")
        try:
            out[action.dest] = _convert(action, raw)
        except ValueError as error:
            raise ConfigFileError(f"{source}: bad value for key {key!r}: {error}") from None
    return out


def read_toml(path: str) -> dict[str, Any]:
    """The file's top-level table; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read the config file ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not a text file (a config file is UTF-8 TOML)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigFileError(f"{path}: not valid TOML ({error})") from None


def apply_config(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the file's values ``parser``'s defaults, so flags on the command line win.

    A required flag set by the file is no longer required on the command line.
    """
    defaults = defaults_from(parser, read_toml(path), path)
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False
    parser.set_defaults(**defaults)


def config_path(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in raw ``argv`` (before parsing: it changes the defaults)."""
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == CONFIG_FLAG and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(CONFIG_FLAG + "="):
            return token.split("=", 1)[1]
    return None


def subcommand(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser | None:
    """The subcommand parser ``argv`` names (the first word: top-level flags take no value)."""
    choices: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            choices = dict(action.choices)
    first = next((token for token in argv if not token.startswith("-")), None)
    return None if first is None else choices.get(first)


def effective(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed settings as config keys; unset values (None) are left out (TOML has no null)."""
    out: dict[str, Any] = {}
    for key, action in config_keys(parser).items():
        value = getattr(args, action.dest, None)
        if _is_switch(action):
            if value == action.const:  # given (not the default: a config file may have moved it)
                out[key] = True
        elif value is not None:
            out[key] = value
    return out


def to_toml(settings: Mapping[str, Any]) -> str:
    """Flat ``key = value`` TOML for what flags hold: str, int, float, bool and lists of them."""
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in settings.items())


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        # A JSON string without \u escapes of astral characters is a TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ConfigFileError(f"cannot write {type(value).__name__} value {value!r} as TOML")


def prepare(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser | None:
    """Before ``parser.parse_args(argv)``: apply the ``--config`` file to the subcommand it
    names; returns that subcommand's parser (for ``--print-config``)."""
    sub = subcommand(parser, argv)
    path = config_path(argv)
    if sub is not None and path is not None:
        apply_config(sub, path)
    return sub


def add_to_every_subcommand(parser: argparse.ArgumentParser) -> None:
    """``--config`` / ``--print-config`` on each subcommand, present ones and any added later."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict(action.choices).values():
                if CONFIG_FLAG not in sub._option_string_actions:
                    add_config_options(sub)
