"""The ``asyncgate`` command: ``serve`` runs a gateway, ``check-config`` checks its configuration.

``asyncgate runs ...`` is a client of a gateway, not part of one: it lives with the client
(asyncgate.client.cli, which imports none of the server's machinery) and is mounted here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from asyncgate import __version__
from asyncgate.client.cli import add_runs_commands, run_runs_command
from asyncgate.config import declared_keys, load
from asyncgate.config.keys import UNSET
from asyncgate.config.reference import value_text
from asyncgate.errors import ConfigError

#: The configuration keys that ``asyncgate serve`` takes as flags too.
_FLAGGED = [key for key in declared_keys().values() if key.info.flag is not None]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncgate", description="An async mode for any synchronous HTTP endpoint.")
    parser.add_argument("--version", action="version", version=f"asyncgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Each key is read from the --config file, then its ASYNCGATE_* environment "
        "variable, then the flag below, the later winning; every key and its variable: docs/configuration.md.",
    )
    serve.add_argument("--config", metavar="FILE", help="YAML configuration file (config.example.yaml shows every key)")
    _add_config_flags(serve)

    check_help = "validate a configuration file, with the ASYNCGATE_* variables, as serve would"
    check = commands.add_parser(
        "check-config",
        help=check_help,
        description=f"{check_help[0].upper()}{check_help[1:]}: print 'FILE: ok' and exit 0, or the error on one line "
        "and exit 2.",
    )
    check.add_argument("file", help="the YAML configuration file")
    add_runs_commands(commands)
    return parser


def _add_config_flags(serve: argparse.ArgumentParser) -> None:
    """A flag for each configuration key declared with one (config/sections.py); it overrides file and environment."""
    for key in _FLAGGED:
        shown = "" if key.info.example is not UNSET else f" (default {value_text(key)})"
        options: dict[str, Any] = {"dest": key.name, "help": _plain(key.info.doc) + shown}
        if key.base is bool:
            options |= {"action": "store_true", "default": None}
        elif key.choices:
            options["choices"] = key.choices
        else:
            options |= {"metavar": key.name.rpartition(".")[2].upper(), "type": int if key.base is int else str}
        serve.add_argument(str(key.info.flag), **options)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key.name: getattr(args, key.name) for key in _FLAGGED}


def _plain(markdown: str) -> str:
    return markdown.replace("`", "").replace("%", "%%")


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "runs":
        return run_runs_command(args, environ)
    env = dict(os.environ if environ is None else environ)
    try:
        if args.command == "check-config":
            load(args.file, environ=env)
            print(f"{args.file}: ok")
            return 0
        config = load(args.config, environ=env, overrides=_overrides(args))
        # Imported here rather than above: the server (uvicorn, starlette, redis, the app) is
        # most of the package, and ``asyncgate runs`` and ``check-config`` need none of it; it
        # tripled their start and exit time on a busy machine.
        from asyncgate import serving
        from asyncgate.tracing import from_environ

        return serving.serve(config, from_environ(env))
    except ConfigError as exc:
        print(f"asyncgate: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
