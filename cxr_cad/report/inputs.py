"""Checked side inputs of a report: the cohort description (workflow ``cohort:`` block or
``--cohort-info FILE``), the ingest record next to a manifest, and ``cv_metrics.json``.

Each reader returns plain dicts and raises :class:`~cxr_cad.errors.ConfigError` naming the file
and every problem at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxr_cad.errors import ConfigError

#: keys a cohort description may hold (all free text; missing ones are "not recorded")
COHORT_KEYS = (
    "name",
    "date",
    "source",
    "site",
    "dates",
    "design",
    "population",
    "eligibility",
    "reference_standard",
    "validation",
    "ingest_rules",
)
_MAX_TEXT = 2000


def check_cohort_info(info: Any, source: str) -> dict:
    """Validate a cohort description mapping; returns it with text values.

    Raises:
        ConfigError: listing every unknown key and every value that is not short text.
    """
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise ConfigError(
            f"the cohort description must be a mapping of {', '.join(COHORT_KEYS)}; got {type(info).__name__}",
            source=source,
        )
    problems = [f"unknown key {k!r} (known: {', '.join(COHORT_KEYS)})" for k in info if k not in COHORT_KEYS]
    out = {}
    for k, v in info.items():
        if k not in COHORT_KEYS or v is None:
            continue
        if isinstance(v, (list, tuple)):
            v = "; ".join(map(str, v))
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            problems.append(f"{k}: must be text, not {type(v).__name__}")
            continue
        text = str(v).strip()
        if len(text) > _MAX_TEXT:
            problems.append(f"{k}: longer than {_MAX_TEXT} characters")
            continue
        out[k] = text
    if problems:
        raise ConfigError(problems, source=source)
    return out


def read_cohort_info(path: str | Path) -> dict:
    """A cohort description from a YAML or JSON file (``--cohort-info FILE``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError("file not found", source=f"--cohort-info {p}")
    try:
        text = p.read_text(encoding="utf-8")
        if len(text) > 100_000:
            raise ConfigError("larger than 100 kB; a cohort description is a few lines", source=f"--cohort-info {p}")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read it as YAML/JSON: {str(exc)[:300]}", source=f"--cohort-info {p}") from exc
    return check_cohort_info(data, f"--cohort-info {p}")


def ingest_record(manifest_path: str | Path | None) -> dict | None:
    """``ingest.json`` next to a manifest (written by ``cxr-cad ingest``), or None."""
    if not manifest_path:
        return None
    p = Path(manifest_path).with_name("ingest.json")
    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_cv_metrics(cv: Any, source: str) -> dict:
    """Validate ``cv_metrics.json`` from ``cxr-cad crossval``; returns it. Raises ConfigError
    listing every problem.

    Needs an object with ``per_fold`` (a list of objects with an integer ``fold``, counts
    ``n``/``n_pos``/``n_neg``, a ``threshold`` in [0, 1] and a ``metrics`` object) and
    ``across_folds`` (an object); other keys are kept as they are.
    """
    problems: list[str] = []
    if not isinstance(cv, dict):
        raise ConfigError(
            "not a cross-validation summary: expected a JSON object with per_fold and "
            f"across_folds (cv_metrics.json from cxr-cad crossval), got {type(cv).__name__}",
            source=source,
        )
    folds = cv.get("per_fold")
    if not isinstance(folds, list) or not folds:
        problems.append("per_fold must be a non-empty list")
        folds = []
    if not isinstance(cv.get("across_folds"), dict):
        problems.append("across_folds must be an object")
    seen = set()
    for i, f in enumerate(folds):
        if not isinstance(f, dict):
            problems.append(f"per_fold[{i}] must be an object")
            continue
        if not isinstance(f.get("fold"), int) or isinstance(f.get("fold"), bool):
            problems.append(f"per_fold[{i}].fold must be an integer")
        elif f["fold"] in seen:
            problems.append(f"per_fold[{i}].fold {f['fold']} appears twice")
        else:
            seen.add(f["fold"])
        for key in ("n", "n_pos", "n_neg"):
            if key in f and not (isinstance(f[key], int) and f[key] >= 0):
                problems.append(f"per_fold[{i}].{key} must be a count")
        thr = f.get("threshold")
        if thr is not None and not (_is_num(thr) and 0 <= thr <= 1):
            problems.append(f"per_fold[{i}].threshold must be a number in [0, 1]")
        if not isinstance(f.get("metrics"), dict):
            problems.append(f"per_fold[{i}].metrics must be an object")
    if problems:
        raise ConfigError(problems, source=f"{source} (not a valid cv_metrics.json)")
    return cv
