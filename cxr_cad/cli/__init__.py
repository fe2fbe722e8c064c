"""Command-line interface: ``cxr-cad <command> ...``.

Each subcommand lives in its own module ``cxr_cad.cli.<name>`` exposing
``register(subparsers)``, which adds a parser and binds its handler with
``set_defaults(func=handler)``. A handler takes the parsed ``argparse.Namespace``
and returns an exit code (0 on success).

A handler parses its arguments into typed options and makes one :mod:`cxr_cad.api` call (the
workflow steps make the same calls); options several commands share are declared once in
:mod:`cxr_cad.cli.options` (accept policy, PACS) and :mod:`cxr_cad.cli.train_options` (the
training flags, from :class:`~cxr_cad.config.TrainConfig`). The CLI reaches the engine
(the inference, training, crossval and runtime packages) only through the API.

Imports are at module top, with two exceptions: optional third-party packages, and the
subcommand modules, which :func:`build_parser` imports one by one (a command not built yet is
skipped). ``cxr-cad --help`` and ``cxr-cad <command> --help`` import no torch: the API imports
the engine when a function runs, and names defined in torch-importing modules
(``api.ReportOptions``, ``api.CVResult``) are looked up when first used, at run time.

Exit codes: 0 success, 2 usage/config errors (:class:`~cxr_cad.errors.UsageError`),
1 any other failure (one-line reason on stderr), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from cxr_cad.core.progress import set_enabled
from cxr_cad.core.provenance import __version__
from cxr_cad.errors import CxrCadError, UsageError, cap_message

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ["ingest", "train", "crossval", "predict", "evaluate", "report", "export", "run", "demo", "listen"]

log = logging.getLogger("cxr_cad")


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors already; keep its message one line + usage."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cxr-cad",
        description="Chest-radiograph computer-aided classification: ingest DICOM/PNG/JPEG, "
        "train and cross-validate a network (ResNet18, ResNet50, DenseNet121: --arch), predict, evaluate and report.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-cad {__version__}")
    _add_verbosity(parser, 0, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
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
