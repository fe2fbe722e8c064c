"""Write or check ``docs/workflow.schema.json``, the JSON Schema of workflow files (a developer
tool, not a ``cxr-cad`` subcommand)::

    python -m cxr_cad.cli.schema            # regenerate after changing a workflow section model
    python -m cxr_cad.cli.schema --check    # exit 1 when the file is out of date

The text comes from :func:`cxr_cad.workflow.json_schema.schema_text`; a test keeps the committed file
equal to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.workflow.json_schema import SCHEMA_FILE, schema_text

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the workflow JSON Schema file."""
    p = argparse.ArgumentParser(prog="python -m cxr_cad.cli.schema", description=main.__doc__)
    p.add_argument("path", nargs="?", default=str(SCHEMA_FILE), help="[docs/workflow.schema.json]")
    p.add_argument("--check", action="store_true", help="exit 1 when the file differs from the models")
    args = p.parse_args(argv)
    text = schema_text()
    if args.check:
        same = Path(args.path).is_file() and Path(args.path).read_text(encoding="utf-8") == text
        print(f"{args.path}: {'up to date' if same else 'out of date; run python -m cxr_cad.cli.schema'}")
        return 0 if same else 1
    atomic_write_text(args.path, text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
