"""Command-line interface: ``cxr-cad <command> ...``.

Each subcommand lives in its own module ``cxr_cad.cli.<name>`` exposing
``register(subparsers)``, which adds a parser and binds its handler with
``set_defaults(func=handler)``. A handler takes the parsed ``argparse.Namespace``
and returns an exit code (0 on success). To add a command: its module, and ONE line in
:data:`COMMANDS`.

A handler parses its arguments into typed options and makes one :mod:`cxr_cad.api` call (the
workflow steps make the same calls); options several commands share are declared once in
:mod:`cxr_cad.cli.options` (accept policy, PACS, the checks) and
:mod:`cxr_cad.cli.train_options` (the training flags, from :class:`~cxr_cad.config.TrainConfig`).
The CLI reaches the engine (the inference, training, crossval and runtime packages) only
through the API.

Fast failures. :func:`main` imports only the module of the command named (all of them for
``cxr-cad --help``); ``cxr_cad.api`` imports each function's module when it is first called.
Before the handler runs:

1. every ``--flag`` is checked against the command's options; an unknown or misspelt one
   is one line with the closest valid flag (abbreviations are not accepted: ``--epoch`` is
   not silently ``--epochs``); argparse errors are one line, not the usage block;
2. :func:`cxr_cad.cli.options.preflight` checks the paths the user named (input files and
   folders exist, ``--model``, output folders can be created and written).

So a wrong argument is reported in about a second, before torch, MONAI or a bundle load.
Command modules keep their top-level imports light (argparse, :mod:`cxr_cad.api`,
:mod:`cxr_cad.config`, :mod:`cxr_cad.errors`) and import heavier packages in the handler.

Exit codes (docs/cli.md has the table): 0 success; 2 usage and configuration errors -
whatever the user gave is wrong: an argument, a path that does not exist, an output folder that
cannot be created or written, a config or workflow, a manifest or labels table
(:class:`~cxr_cad.errors.UsageError` and its subclasses); 1 the work itself failed (a corrupt
bundle, a full disk, a failed export check, a port in use...), with a one-line reason on
stderr; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import logging
import os
import re
import sys
import time
from typing import NoReturn

from cxr_cad.core.progress import set_enabled
from cxr_cad.core.provenance import __version__
from cxr_cad.errors import CxrCadError, UsageError, cap_message

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ["ingest", "train", "crossval", "predict", "evaluate", "report", "export", "run", "demo", "listen", "adapt"]

log = logging.getLogger("cxr_cad")

_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)")
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+(e-?\d+)?$")


def _closest(given: str, candidates: list[str]) -> str | None:
    close = difflib.get_close_matches(given, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


class _Parser(argparse.ArgumentParser):
    """No abbreviations; an error is one line (with the closest valid choice) and exit 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        m = _INVALID_CHOICE.search(message)
        if m:
            choices = [c.strip().strip("'") for c in m.group("choices").split(",")]
            close = _closest(m.group("given"), choices)
            if close:
                message += f"; did you mean {close}?"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command_named(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is not an option), when it is one."""
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``cxr-cad`` parser; ``only``: register that one command (its module alone is imported)."""
    parser = _Parser(
        prog="cxr-cad",
        description="Chest-radiograph computer-aided classification: ingest DICOM/PNG/JPEG, "
        "train and cross-validate a network (ResNet18, ResNet50, DenseNet121: --arch), predict, evaluate and report.",
        epilog="Exit codes: 0 done; 2 usage or configuration error (an argument, a path, an output folder "
        "that cannot be written, a config, workflow or table); 1 the work failed (one-line reason). "
        "docs/cli.md has the table.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-cad {__version__}")
    _add_verbosity(parser, 0, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in [only] if only else COMMANDS:
        try:
            module = importlib.import_module(f"cxr_cad.cli.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet in this tree
            if exc.name != f"cxr_cad.cli.{name}":
                raise
            continue
        module.register(sub)
    for subparser in sub.choices.values():  # -q/-v also after the command name: `cxr-cad ingest ... -q`
        _add_verbosity(subparser, argparse.SUPPRESS, argparse.SUPPRESS)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, verbose_default, quiet_default) -> None:
    """``-v``/``-q`` on ``parser``; on subcommands with SUPPRESS defaults, so an option given
    before the command name is not reset by the subparser."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=verbose_default, help="more log output (-vv for debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=quiet_default, help="only warnings and errors; no progress bars"
    )


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def unknown_option(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The one-line error for the first option of ``argv`` that the command does not have
    (with the closest one it has), or None when every option is known."""
    words = [t for t in argv if not t.startswith("-")]
    command = _command_named(argv)
    if words and command is None:  # not a command: argparse names the commands (did you mean ...)
        return None
    sub = _subparser(parser, command) if command else None
    known = dict(parser._option_string_actions)
    if sub is not None:
        known.update(sub._option_string_actions)
    prog = sub.prog if sub is not None else parser.prog
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-") or token == "-" or _NEGATIVE_NUMBER.match(token):
            continue
        flag = token.split("=", 1)[0]
        if flag in known:
            continue
        if not flag.startswith("--") and all(f"-{c}" in known for c in flag[1:]):  # -vv, -qv
            continue
        longs = sorted(k for k in known if k.startswith("--"))
        close = _closest(flag, longs)
        hint = f"; did you mean {close}?" if close else ""
        return f"{prog}: error: unknown option {flag}{hint} (see {prog} --help)"
    return None


#: errno values that mean "the output cannot be written here" rather than a bug.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def _os_error_line(exc: OSError) -> str:
    """One line for an OSError that reached the CLI: what failed, and where (the folder)."""
    where = exc.filename or ""
    folder = os.path.dirname(os.path.abspath(where)) if where else ""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left to write in {folder or 'the output folder'} ({what}); free space there "
            "or choose another folder, then run the command again (finished work is kept)"
        )
    return f"cannot write or read {where or 'a file'} in {folder or '?'}: {what}"


class _UtcFormatter(logging.Formatter):
    """``LEVEL 2025-01-31T09:14:03.123Z logger: message``: every log line with its UTC time (ISO 8601)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("%(levelname)s %(asctime)s %(name)s: %(message)s"))
    root = logging.getLogger("cxr_cad")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Returns the exit code (tests call ``main([...])`` directly)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_named(argv))
    wrong = unknown_option(parser, argv)
    if wrong:
        print(wrong, file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or argparse usage errors (2)
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(args.verbose, args.quiet)
    if args.quiet:
        set_enabled(False)
    from cxr_cad.cli.options import preflight  # (imports cxr_cad.api, which is light)

    try:
        preflight(args)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"cxr-cad {args.command}: error: {cap_message(str(exc))}", file=sys.stderr)
        return 2
    except CxrCadError as exc:
        print(f"cxr-cad {args.command}: failed: {cap_message(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        log.debug("OSError", exc_info=True)
        print(f"cxr-cad {args.command}: failed: {cap_message(_os_error_line(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cxr-cad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
