"""Command-line interface: ``cxr-cad <command> ...``.

Each subcommand lives in its own module ``cxr_cad.cli.<name>`` exposing
``register(subparsers)``, which adds a parser and binds its handler with
``set_defaults(func=handler)``. A handler takes the parsed ``argparse.Namespace``
and returns an exit code (0 on success).

Exit codes: 0 success, 2 usage/config errors (:class:`~cxr_cad.errors.UsageError`),
1 any other failure (one-line reason on stderr), 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cxr_cad import __version__
from cxr_cad.errors import CxrCadError, UsageError
from cxr_cad.progress import set_enabled

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ["ingest", "train", "crossval", "predict", "evaluate", "report", "run", "demo"]

log = logging.getLogger("cxr_cad")


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors already; keep its message one line + usage."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cxr-cad",
        description="Chest-radiograph computer-aided classification: ingest DICOM/PNG/JPEG, "
        "train and cross-validate a ResNet18, predict, evaluate and report.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-cad {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cxr_cad.cli.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet in this tree
            if exc.name != f"cxr_cad.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cxr_cad")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Returns the exit code (tests call ``main([...])`` directly)."""
    parser = build_parser()
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
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"cxr-cad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except CxrCadError as exc:
        print(f"cxr-cad {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cxr-cad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
