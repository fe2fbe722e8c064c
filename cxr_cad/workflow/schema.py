"""Workflow files: reading, ``--set`` overrides, ``${ENV}`` expansion and validation.

A workflow is a YAML mapping (read with ``yaml.safe_load``) whose sections are listed in
:data:`SCHEMA`. :func:`load_workflow` returns the resolved workflow as a plain nested
dict with every default filled in, or raises one :class:`~cxr_cad.errors.ConfigError`
listing every problem (unknown keys, wrong types, missing paths, bad step lists) before
anything runs. The ``train`` section is checked by :class:`cxr_cad.config.TrainConfig`.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_cad.config import TrainConfig, read_yaml_mapping
from cxr_cad.errors import ConfigError
from cxr_cad.io.yamlfile import load_yaml_text

__all__ = [
    "SCHEMA",
    "STEP_NAMES",
    "load_workflow",
    "parse_set",
    "apply_sets",
    "expand_env",
    "validate_workflow",
    "train_config_dict",
]

#: Steps a workflow may name, in the only order they can run.
STEP_NAMES: tuple[str, ...] = ("ingest", "split", "crossval", "train", "evaluate", "report")

# Value kinds: "str", "int", "float", "bool", "strlist", "path" (must exist), "mapping".
# Each entry: key -> (kind, default, may_be_null).
SCHEMA: dict[str, Any] = {
    "name": ("str", "workflow", False),
    "description": ("str", "", True),
    "steps": ("strlist", list(STEP_NAMES), False),
    "data": {
        "train": ("path", None, True),  # folder of DICOM/PNG/JPEG, or a manifest .csv
        "train_labels": ("str", "folders", True),  # "folders", a labels CSV, or null (labels in the manifest)
        "test": ("path", None, True),
        "test_labels": ("str", "folders", True),
        "label_key": ("str", None, True),  # key column of a labels CSV (None = detected)
        "classes": ("strlist", ["NORMAL", "PNEUMONIA"], False),
        "positive_class": ("str", "PNEUMONIA", False),
        "patient_id_pattern": ("str", None, True),
    },
    "ingest": {
        "modalities": ("strlist", ["CR", "DX", "DR"], False),  # [] = any modality
        "reject_lateral": ("bool", True, False),
        "apply_voi": ("bool", True, False),
        "verify_pixels": ("bool", False, False),
        "workers": ("int", None, True),
    },
    "split": {
        "test_fraction": ("float", 0.2, False),
        "seed": ("int", 0, False),
    },
    "model": {
        "init": ("str", "imagenet", False),  # imagenet | imagenet:/path.pth | none | bundle | /path
        "bundle": ("path", None, True),  # an existing model bundle (scored / compared / fine-tuned)
        "image_size": ("int", 224, False),
        "aspect": ("str", "squash", False),
        "in_channels": ("int", 1, False),
        "freeze_backbone_epochs": ("int", 0, False),
    },
    "train": ("mapping", {}, False),  # TrainConfig options except model / classes
    "crossval": {  # folds are seeded by train.seed
        "folds": ("int", 5, False),
    },
    "evaluate": {
        "batch_size": ("int", 32, False),
        "workers": ("int", None, True),
        "device": ("str", "auto", False),
    },
    "cohort": {  # shown in the report (docs/report.md); null = "not recorded"
        "source": ("str", None, True),
        "site": ("str", None, True),
        "dates": ("str", None, True),
        "design": ("str", None, True),
        "population": ("str", None, True),
        "eligibility": ("str", None, True),
        "reference_standard": ("str", None, True),
        "validation": ("str", None, True),
    },
    "report": {
        "pdf": ("bool", True, False),
        "bootstrap": ("int", 2000, False),
        "alpha": ("float", 0.05, False),
    },
}

_YAML11_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a nested structure.

    An unset variable without a default becomes ``""``; a string that was only such a
    reference becomes ``None`` (= not given)."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        whole = _ENV_RE.fullmatch(value.strip())
        out = _ENV_RE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
        if whole and out == "":
            return None
        return out
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    return value


def parse_set(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", "data.train=/x"]`` -> ``[("train.epochs", 3), ("data.train", "/x")]``.

    Values are read as YAML (``3`` is an int, ``true`` a bool, ``[a, b]`` a list,
    ``null`` None). Raises ConfigError listing every malformed item."""
    out, problems = [], []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
            continue
        try:
            value = load_yaml_text(text, "command line") if text.strip() else None
        except ConfigError as exc:  # not YAML, or an alias bomb (cxr_cad.io.yamlfile limits)
            problems.append(f"--set {item!r}: value is not valid YAML or too large ({exc.problems[0]})")
            continue
        if isinstance(value, str) and _YAML11_FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" as text; a user means the number
        out.append((key, value))
    if problems:
        raise ConfigError(problems, "command line")
    return out


def apply_sets(doc: dict, sets: Sequence[tuple[str, Any]]) -> dict:
    """Return a deep copy of ``doc`` with dotted-key values set (intermediate mappings created)."""
    out = copy.deepcopy(doc)
    for key, value in sets:
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _coerce(kind: str, value: Any) -> tuple[bool, Any]:
    if kind in ("str", "path"):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return False, value
        return True, str(value)
    if kind == "int":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return False, value
        return True, int(value)
    if kind == "float":
        if isinstance(value, bool):
            return False, value
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return (isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value)
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "strlist":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            return False, value
        return True, [str(v) for v in value]
    if kind == "mapping":
        return isinstance(value, dict), value
    raise ValueError(kind)


_KIND_TEXT = {
    "str": "a string",
    "path": "a path",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "strlist": "a list of names",
    "mapping": "a mapping",
}


def _resolve_section(spec: dict, given: Any, prefix: str, problems: list[str]) -> dict:
    out: dict[str, Any] = {}
    if given is None:
        given = {}
    if not isinstance(given, dict):
        problems.append(f"{prefix} must be a mapping of options, not {type(given).__name__}")
        given = {}
    for key in given:
        if key not in spec:
            problems.append(f"unknown key {prefix}.{key} (known: {', '.join(spec)})")
    for key, entry in spec.items():
        kind, default, nullable = entry
        value = given.get(key, copy.deepcopy(default))
        if value is None:
            if not nullable:
                problems.append(f"{prefix}.{key} must be {_KIND_TEXT[kind]}, not null")
            out[key] = None
            continue
        ok, conv = _coerce(kind, value)
        if not ok:
            problems.append(f"{prefix}.{key} must be {_KIND_TEXT[kind]}, not {value!r}")
        out[key] = conv
    return out


def train_config_dict(wf: Mapping[str, Any]) -> dict:
    """The :class:`~cxr_cad.config.TrainConfig` mapping a workflow asks for: its ``train``
    section plus ``model.*`` (but ``bundle``) and ``data.classes``/``data.positive_class``."""
    cfg = copy.deepcopy(dict(wf.get("train") or {}))
    data = dict(cfg.get("data") or {})
    data["classes"] = list(wf["data"]["classes"])
    data["positive_class"] = wf["data"]["positive_class"]
    cfg["data"] = data
    model = {k: v for k, v in wf["model"].items() if k != "bundle"}
    if model["init"] == "bundle":
        model["init"] = wf["model"]["bundle"] or "bundle"
    cfg["model"] = model
    return cfg


def _check_paths(wf: dict, base: Path, problems: list[str]) -> None:
    """Make paths absolute (relative to ``base``) and check that the ones given exist."""
    for section, key in (("data", "train"), ("data", "test"), ("model", "bundle")):
        value = wf[section][key]
        if value in (None, ""):
            wf[section][key] = None
            continue
        p = Path(os.path.expanduser(value))
        p = p if p.is_absolute() else (base / p)
        if not p.exists():
            problems.append(
                f"{section}.{key}: {p} does not exist; give an existing "
                f"{'model bundle' if key == 'bundle' else 'folder or manifest .csv'} "
                f"(e.g. --set {section}.{key}=PATH)"
            )
        wf[section][key] = str(p)
    for key in ("train_labels", "test_labels"):
        value = wf["data"][key]
        if value in (None, "", "folders", "manifest"):
            wf["data"][key] = None if value in ("", "manifest") else value
            continue
        p = Path(os.path.expanduser(value))
        p = p if p.is_absolute() else (base / p)
        if not p.is_file():
            problems.append(
                f"data.{key}: labels file {p} does not exist (use 'folders' for labels taken "
                "from folder names, or null when the manifest has labels)"
            )
        wf["data"][key] = str(p)
    init = wf["model"]["init"]
    if init.startswith("imagenet:") or init not in ("imagenet", "none", "bundle"):
        raw = init.split(":", 1)[1] if init.startswith("imagenet:") else init
        p = Path(os.path.expanduser(raw))
        p = p if p.is_absolute() else (base / p)
        if not p.is_file():
            problems.append(
                f"model.init: weights file {p} does not exist (use imagenet, "
                "imagenet:/path/resnet18-f37072fd.pth, none, bundle or a bundle path)"
            )
        wf["model"]["init"] = f"imagenet:{p}" if init.startswith("imagenet:") else str(p)


def _check_steps(wf: dict, problems: list[str]) -> None:
    steps = wf["steps"]
    unknown = [s for s in steps if s not in STEP_NAMES]
    if unknown:
        problems.append(f"steps: unknown step(s) {unknown} (known, in order: {', '.join(STEP_NAMES)})")
        return
    if len(set(steps)) != len(steps) or steps != sorted(steps, key=STEP_NAMES.index):
        problems.append(f"steps must be distinct and in the order {', '.join(STEP_NAMES)}; got {steps}")
    if not steps:
        problems.append("steps is empty; name at least one of " + ", ".join(STEP_NAMES))
    data, model = wf["data"], wf["model"]
    needs_train = {"crossval", "train"} & set(steps) or ("split" in steps)
    if needs_train and data["train"] is None:
        problems.append(
            "data.train is required by steps "
            + ", ".join(sorted({"crossval", "train", "split"} & set(steps)))
            + ": set it with --set data.train=PATH (a folder or a manifest .csv)"
        )
    if "ingest" in steps and data["train"] is None and data["test"] is None and not needs_train:
        problems.append("ingest needs data.train and/or data.test: set them with --set data.train=PATH")
    if "split" in steps and data["test"] is not None:
        problems.append(
            "steps has split (held-out patients from data.train) but data.test is also given; drop one of them"
        )
    if "evaluate" in steps and "train" not in steps and model["bundle"] is None:
        problems.append("evaluate without a train step needs an existing model: --set model.bundle=PATH")
    if "evaluate" in steps and data["test"] is None and "split" not in steps and "crossval" not in steps:
        # (with crossval the evaluate step is left out with a note: cross-validation only)
        problems.append("evaluate needs a test cohort: set data.test (or add the split step)")
    if model["init"] == "bundle" and model["bundle"] is None:
        problems.append("model.init is 'bundle' but model.bundle is not set: --set model.bundle=PATH")
    if data["positive_class"] not in data["classes"]:
        problems.append(f"data.positive_class {data['positive_class']!r} is not one of data.classes {data['classes']}")
    if not 0.0 < wf["split"]["test_fraction"] < 1.0:
        problems.append(f"split.test_fraction must be in (0, 1), not {wf['split']['test_fraction']}")
    if not 2 <= wf["crossval"]["folds"] <= 50:
        problems.append(f"crossval.folds must be in [2, 50], not {wf['crossval']['folds']}")
    if wf["evaluate"]["batch_size"] < 1:
        problems.append(f"evaluate.batch_size must be >= 1, not {wf['evaluate']['batch_size']}")
    if not 0.0 < wf["report"]["alpha"] < 0.5:
        problems.append(f"report.alpha must be in (0, 0.5), not {wf['report']['alpha']}")


def _train_problem(text: str) -> str:
    """Name the workflow section a TrainConfig problem belongs to."""
    if text.startswith(("model.", "unknown option model.")):
        return text
    if text.startswith("unknown option "):
        return "train: " + text
    if text.split()[0] in ("data.classes", "data.positive_class"):
        return text
    return f"train.{text}"


def validate_workflow(doc: Any, *, base_dir: str | os.PathLike = ".", source: str | None = None) -> dict:
    """Resolve defaults and check everything; returns the resolved workflow dict.

    Raises:
        ConfigError: with every problem found (unknown keys, wrong types, missing paths,
            steps that cannot run with the inputs given, invalid ``train`` options).
    """
    problems: list[str] = []
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError([f"a workflow must be a mapping of sections, not {type(doc).__name__}"], source)
    for key in doc:
        if key not in SCHEMA:
            problems.append(f"unknown key {key!r} (known: {', '.join(SCHEMA)})")
    wf: dict[str, Any] = {}
    for key, spec in SCHEMA.items():
        if isinstance(spec, dict):
            wf[key] = _resolve_section(spec, doc.get(key), key, problems)
        else:
            kind, default, nullable = spec
            value = doc.get(key, copy.deepcopy(default))
            if value is None and nullable:
                wf[key] = None
                continue
            ok, conv = _coerce(kind, value)
            if not ok:
                problems.append(f"{key} must be {_KIND_TEXT[kind]}, not {value!r}")
                conv = copy.deepcopy(default)
            wf[key] = conv
    if "model" in wf["train"]:
        problems.append("train.model: put model options in the top-level model section")
    tdata = wf["train"].get("data")
    if isinstance(tdata, dict) and {"classes", "positive_class"} & set(tdata):
        problems.append("train.data.classes/positive_class: set them in the top-level data section")
    _check_paths(wf, Path(base_dir), problems)
    _check_steps(wf, problems)
    if tdata is not None and not isinstance(tdata, dict):
        problems.append(f"train.data must be a mapping of options, not {type(tdata).__name__}")
    else:
        try:
            TrainConfig.from_dict(train_config_dict(wf))
        except ConfigError as exc:
            problems += [_train_problem(p) for p in exc.problems]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return wf


def load_workflow(
    path: str | os.PathLike, sets: Sequence[str] = (), *, environ: Mapping[str, str] | None = None
) -> dict:
    """Read a workflow file, expand ``${ENV}``, apply ``--set KEY=VALUE`` items, validate.

    Relative paths in the file are resolved against the current folder (where the user
    runs ``cxr-cad run``). Raises ConfigError (exit code 2) listing every problem.
    """
    source = str(path)
    doc = read_yaml_mapping(path, what="workflow file", must_hold="a workflow must be a mapping of sections")
    doc = expand_env(doc, environ)
    doc = apply_sets(doc, parse_set(list(sets)))
    return validate_workflow(doc, base_dir=Path.cwd(), source=source)
