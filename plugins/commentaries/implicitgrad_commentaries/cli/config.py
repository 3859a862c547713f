"""`--config FILE`: the settings of `learn` and `train` from a TOML file, and the resolved
settings of a run written back as TOML that reproduces it.

A key is a long flag name without its dashes (`student-lr`, or `student_lr`), at the top
level of the file or in a `[learn]` or `[train]` table; the table of the other command is
ignored, and a key in the command's table wins over the same key at the top level. Flags
on the command line win over the file. Every value is checked by the same type function
that checks the flag, before any work starts.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the `tomli` dependency is only installed on Python 3.10
    import tomli as tomllib

from .checks import UsageError, toml_kind

__all__ = ["CONFIG_COMMANDS", "NOT_SAVED", "config_keys", "read_config", "dump_config"]

CONFIG_COMMANDS = ("learn", "train")
# Flags about one invocation rather than about the run: never read from a file, or never
# written to the saved configuration (so that passing it back does not replace or resume
# anything by surprise).
NOT_READ = frozenset({"help", "config", "debug"})
NOT_SAVED = NOT_READ | {"quiet", "overwrite", "resume"}


def config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The keys a configuration file may hold for a subcommand: its long flags without the
    dashes, and its positional arguments by name, in the parser's order."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        names = [o[2:] for o in action.option_strings if o.startswith("--")]
        if not action.option_strings:
            names = [action.dest]
        for name in names:
            if name not in NOT_READ:
                keys[name] = action
    return keys


def read_config(
    path: str, command: str, parsers: Mapping[str, argparse.ArgumentParser]
) -> dict[str, Any]:
    """The settings for `commentaries COMMAND` in the TOML file `path`, given the
    subcommands' parsers by name.

    **Returns:**

    argparse destination → value, each value checked and converted as its flag would be.

    **Raises:**

    `UsageError` (one line naming the file and the key) for a file that cannot be read or
    parsed, an unknown key, a key given twice, a value of the wrong type or out of range.
    """
    where = f"--config {path!r}"
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file; pass an existing TOML file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not a UTF-8 text file; pass a TOML file") from None
    except OSError as err:
        raise UsageError(f"{where}: cannot read it ({err.strerror or err})") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{where} is not valid TOML: {err}") from None
    for name in CONFIG_COMMANDS:
        if name in raw and not isinstance(raw[name], dict):
            raise UsageError(
                f"{where}: {name!r} must be a table ([{name}]) of settings of `commentaries "
                f"{name}`, got {toml_kind(raw[name])}"
            )
    layers = [("", {k: v for k, v in raw.items() if k not in CONFIG_COMMANDS})]
    layers.append((f"{command}.", raw.get(command, {})))
    keys = config_keys(parsers[command])
    values: dict[str, Any] = {}
    for prefix, layer in layers:
        seen: dict[str, str] = {}
        for key, value in layer.items():
            shown = f"{prefix}{key}"
            name = key.replace("_", "-")
            if name not in keys:
                hint = _hint(name, command, keys, parsers)
                raise UsageError(
                    f"{where}: unknown key {shown!r}: not a flag of `commentaries {command}`; "
                    f"{hint}"
                )
            if name in seen:
                raise UsageError(
                    f"{where}: {seen[name]!r} and {shown!r} are the same setting; keep one"
                )
            seen[name] = shown
            try:
                values[keys[name].dest] = _convert(keys[name], value)
            except argparse.ArgumentTypeError as err:
                raise UsageError(f"{where}: key {shown!r}: {err}") from None
    return values


def _hint(
    name: str,
    command: str,
    keys: Mapping[str, argparse.Action],
    parsers: Mapping[str, argparse.ArgumentParser],
) -> str:
    """What to do about the unknown key `name`."""
    for other in CONFIG_COMMANDS:
        if other != command and name in config_keys(parsers[other]):
            return f"it is a flag of `commentaries {other}`: put it in a [{other}] table"
    close = difflib.get_close_matches(name, list(keys), n=1)
    return f"did you mean {close[0]!r}?" if close else f"see `commentaries {command} --help`"


def _convert(action: argparse.Action, value: Any) -> Any:
    """A TOML value for `action`, checked like the flag's text on the command line."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected true or false, got {toml_kind(value)}")
        return value
    if isinstance(action, argparse._AppendAction):  # --set KEY=VALUE, as a table
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(
                f"expected a table of commentary settings ([learn.set]), got {toml_kind(value)}"
            )
        items = []
        for key, setting in value.items():
            if not key.isidentifier():
                raise argparse.ArgumentTypeError(f"{key!r} is not a setting name")
            try:
                items.append(f"{key}={json.dumps(setting, allow_nan=False)}")
            except (TypeError, ValueError):
                raise argparse.ArgumentTypeError(
                    f"{key} = {setting!r}: expected a finite number, string, boolean, array "
                    "or table"
                ) from None
        return items
    from_toml = getattr(action.type, "from_toml", None)
    if from_toml is not None:
        return from_toml(value)
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"expected a string, got {toml_kind(value)}")
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {choices})")
    return action.type(value) if callable(action.type) else value


def dump_config(
    command: str,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    resolved: dict[str, Any],
) -> tuple[str, list[str]]:
    """The resolved settings of a run as TOML that `--config` reads back.

    **Arguments:**

    - `command`: `"learn"` or `"train"`; the settings go in that table.
    - `parser`: the subcommand's parser (its flags, in order).
    - `args`: the parsed arguments (defaults, file and flags merged).
    - `resolved`: destination → value for settings resolved by the command itself (the
      plugin's default method, say); a `None` there leaves the setting out.

    **Returns:**

    `(text, left out)`: the TOML text and the `--set` names whose value TOML cannot hold
    (`null`, also inside a list or an object).
    """
    table: dict[str, Any] = {}
    left_out: list[str] = []
    for name, action in config_keys(parser).items():
        if name in NOT_SAVED or name in table:
            continue
        value = resolved.get(action.dest, getattr(args, action.dest, None))
        if isinstance(value, dict):
            left_out += [k for k, v in value.items() if _holds_null(v)]
            value = {k: v for k, v in value.items() if not _holds_null(v)}
            if not value:
                continue
        if value is None or value is False:
            continue
        table[name] = list(value) if isinstance(value, tuple) else value
    import tomli_w

    header = (
        f"# The resolved settings of `commentaries {command}`; run it again with\n"
        f"# `commentaries {command} --config THIS_FILE` (flags given there win).\n"
    )
    return header + tomli_w.dumps({command: table}), left_out


def _holds_null(value: Any) -> bool:
    """Whether a JSON value is or contains `null`, which TOML cannot write."""
    if isinstance(value, dict):
        return any(_holds_null(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_null(v) for v in value)
    return value is None
