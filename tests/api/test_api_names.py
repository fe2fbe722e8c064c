"""The API is discoverable and docs/api.md names what exists (issue 25).

* ``dir(cxr_cad)`` lists the API (notebook tab completion) and ``help(cxr_cad)`` describes it,
  while ``import cxr_cad`` and ``dir(cxr_cad)`` import neither torch nor pandas;
* every exported name resolves, and the typed (``TYPE_CHECKING``) names are all exported;
* every ``cxr_cad.<name>`` and every class name docs/api.md shows exists (it said ``CVResult``
  where the class is ``CrossvalResult``; both exist now, ``CVResult`` an alias).
"""

from __future__ import annotations

import ast
import importlib
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cxr_cad
from cxr_cad import api

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"
#: The functions a notebook user looks for first (docs/api.md's tables).
CORE = [
    "ingest",
    "train",
    "crossval",
    "predict",
    "evaluate",
    "write_report",
    "write_cv_report",
    "report_cohort",
    "evaluate_cohort",
    "cohort_info",
    "predict_sources",
    "listen",
    "adapt",
]
#: Where a class named in docs/api.md may live (the API, or the engine result it returns).
CLASS_HOMES = [
    "cxr_cad.api",
    "cxr_cad.model",
    "cxr_cad.report",
    "cxr_cad.errors",
    "cxr_cad.inference.result",
    "cxr_cad.training.trainer",
]


def test_dir_lists_the_api_without_importing_torch_or_pandas():
    code = (
        "import sys, cxr_cad\n"
        "names = dir(cxr_cad)\n"
        "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'heavy import'\n"
        "print(' '.join(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    for name in [*CORE, "CrossvalResult", "CVResult", "AcceptPolicy", "PredictOptions", "__version__"]:
        assert name in out, name
    assert not [
        n for n in out if not n.startswith("_") and n not in cxr_cad.__all__ and n not in ("api", "cli", "core")
    ]


def test_help_shows_the_api():
    text = pydoc.render_doc(cxr_cad, renderer=pydoc.plaintext)
    for name in CORE:
        assert f"{name}(" in text, name
    assert "CrossvalResult" in text


@pytest.mark.parametrize("name", api.__all__)
def test_every_exported_name_resolves(name):
    value = getattr(api, name)
    assert value is getattr(cxr_cad, name)
    if name == "CVResult":
        assert value is api.CrossvalResult


def test_typed_names_are_exported():
    """Each name imported under TYPE_CHECKING in cxr_cad/api/__init__.py is in __all__."""
    tree = ast.parse((ROOT / "cxr_cad" / "api" / "__init__.py").read_text(encoding="utf-8"))
    typed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                typed |= {a.asname or a.name for a in getattr(imp, "names", [])}
    assert len(typed) > 30
    assert typed <= set(api.__all__), typed - set(api.__all__)


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_name_the_api_page_mentions_exists():
    text = DOC.read_text(encoding="utf-8")
    dotted = set(re.findall(r"\bcxr_cad(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
    assert {"cxr_cad.report_cohort", "cxr_cad.evaluate_cohort", "cxr_cad.cohort_info"} <= dotted
    for name in sorted(dotted):
        _resolve(name)  # raises when the page names something that does not exist
    classes = set(re.findall(r"`([A-Z][A-Za-z]+)(?:\(|`| \()", text))
    assert {"CrossvalResult", "ReportResult", "Bundle"} <= classes
    missing = [c for c in sorted(classes) if not any(hasattr(importlib.import_module(m), c) for m in CLASS_HOMES)]
    assert not missing, f"docs/api.md names classes that do not exist: {missing}"
