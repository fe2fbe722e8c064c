"""Workflow files: reading, ``--set`` overrides, ``${ENV}`` expansion and validation.

A workflow is a YAML mapping (read with ``yaml.safe_load``) whose sections are the models of
:mod:`cxr_cad.workflow.sections` (:class:`~cxr_cad.workflow.sections.WorkflowFile`; JSON
Schema in ``docs/workflow.schema.json``). :func:`load_workflow` returns the resolved
workflow as a plain nested dict with every default filled in, or raises one
:class:`~cxr_cad.errors.ConfigError` listing every problem (unknown keys, wrong types,
missing paths, bad step lists) before anything runs. The ``train`` section is checked by
:class:`cxr_cad.config.TrainConfig`.

Unknown keys are reported with the closest valid key (:func:`suggest_keys`: ``train.epoch:
unknown key (check the spelling); did you mean train.epochs?``). :func:`find_workflow` finds a
workflow file by path or by the name of a shipped workflow (:func:`shipped_workflows`:
``cxr-cad run chandola2021_pneumonia``).

``python -m cxr_cad.cli.schema [--check]`` writes (or checks) ``docs/workflow.schema.json``
from :func:`workflow_json_schema`.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cxr_cad.config import ModelConfig, TrainConfig, read_yaml_mapping
from cxr_cad.config.base import validation_problems
from cxr_cad.config.types import ConfigModel
from cxr_cad.core.atomic import json_dumps
from cxr_cad.core.yamlfile import load_yaml_text
from cxr_cad.errors import ConfigError, UsageError
from cxr_cad.workflow.sections import SECTION_MODELS, STEP_NAMES, WorkflowFile

__all__ = [
    "SCHEMA",
    "SCHEMA_FILE",
    "SHIPPED_DIRS",
    "find_workflow",
    "schema_text",
    "shipped_workflows",
    "suggest_keys",
    "STEP_NAMES",
    "WorkflowFile",
    "load_workflow",
    "parse_set",
    "apply_sets",
    "expand_env",
    "validate_workflow",
    "train_config_dict",
    "workflow_json_schema",
]

#: The workflow file model (it replaced a hand-written table of kinds and defaults).
SCHEMA = WorkflowFile

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
        except ConfigError as exc:  # not YAML, or an alias bomb (cxr_cad.core.yamlfile limits)
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


#: The model options workflows had before the section became ModelConfig; the others are
#: passed on only when they differ from the default, so step configs (and the fingerprints
#: that decide what a resumed run re-does) stay as they were.
_FIRST_MODEL_KEYS = ("init", "image_size", "aspect", "in_channels", "freeze_backbone_epochs")


def train_config_dict(wf: Mapping[str, Any]) -> dict:
    """The :class:`~cxr_cad.config.TrainConfig` mapping a workflow asks for: its ``train``
    section plus ``model.*`` (but ``bundle``) and ``data.classes``/``data.positive_class``."""
    cfg = copy.deepcopy(dict(wf.get("train") or {}))
    data = dict(cfg.get("data") or {})
    data["classes"] = list(wf["data"]["classes"])
    data["positive_class"] = wf["data"]["positive_class"]
    if wf["data"].get("task") == "multilabel":  # one sigmoid per finding (docs/train.md#multi-label)
        data.update(task="multilabel", uncertain=wf["data"]["uncertain"])
    cfg["data"] = data
    defaults = ModelConfig().to_dict()
    model = {k: v for k, v in wf["model"].items() if k in _FIRST_MODEL_KEYS or (k in defaults and v != defaults[k])}
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


def _valid_part(cls: type[ConfigModel], given: Any, where: str, problems: list[str]) -> dict:
    """``given`` validated by ``cls`` as a plain dict. Problems are recorded with their
    location (prefix ``where``), and the keys at fault fall back to their defaults so the
    remaining checks still run."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        problems.append(f"{where} must be a mapping of options, not {type(given).__name__}")
        given = {}
    try:
        return cls.model_validate(given).to_dict()
    except ValidationError as exc:
        problems += validation_problems(exc, prefix=where)
        bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
    try:
        return cls.model_validate({k: v for k, v in given.items() if k not in bad}).to_dict()
    except ValidationError:
        return cls().to_dict()


def _train_problem(text: str) -> str:
    """Name the workflow section a TrainConfig problem belongs to (model and classes are top level)."""
    for moved in ("model.", "data.classes:", "data.positive_class:"):
        if text.startswith("train." + moved):
            return text[len("train.") :]
    return text


def _check_train(wf: dict, problems: list[str]) -> None:
    train = wf["train"]
    if "model" in train:
        problems.append("train.model: put model options in the top-level model section")
    tdata = train.get("data")
    if tdata is not None and not isinstance(tdata, Mapping):
        problems.append(f"train.data must be a mapping of options, not {type(tdata).__name__}")
        return
    if tdata and {"classes", "positive_class"} & set(tdata):
        problems.append("train.data.classes/positive_class: set them in the top-level data section")
    try:
        TrainConfig.from_dict(train_config_dict(wf), prefix="train")
    except ConfigError as exc:
        problems += [_train_problem(p) for p in exc.problems]


# -- did you mean: the closest valid key of an unknown one ---------------------------------------
_UNKNOWN_KEY = re.compile(r"^(?P<loc>[A-Za-z0-9_.\[\]-]+): unknown key \(check the spelling\)$")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (through Optional/Annotated), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _keys_at(root: Mapping[str, type[BaseModel] | None], parts: Sequence[str]) -> list[str]:
    """The valid keys of the mapping at ``parts`` below ``root`` ({key: model or None})."""
    fields: Mapping[str, Any] = root
    for part in parts:
        model = fields.get(part)
        if model is None:
            return []
        fields = {name: _model_of(f.annotation) for name, f in model.model_fields.items()}
    return list(fields)


def _root_of(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    return {name: _model_of(f.annotation) for name, f in model.model_fields.items()}


def _workflow_root() -> dict[str, type[BaseModel] | None]:
    root = _root_of(WorkflowFile)
    root["train"] = TrainConfig  # the train section is checked by TrainConfig
    return root


def suggest_keys(problems: Sequence[str], root: type[BaseModel] | None = None) -> list[str]:
    """``problems`` with the closest valid key added to each "unknown key" problem.

    ``root``: the model the locations start from (e.g. :class:`~cxr_cad.config.TrainConfig` for
    a ``--config`` file); None = a workflow file. A key that is not close to any key of its
    section but is a key of another section is pointed there (``train.image_size`` -> ``model.image_size``).
    """
    tree = _workflow_root() if root is None else _root_of(root)
    out = []
    for problem in problems:
        m = _UNKNOWN_KEY.match(problem)
        if not m:
            out.append(problem)
            continue
        parts = m.group("loc").split(".")
        section, key = parts[:-1], parts[-1]
        elsewhere = [name for name, model in tree.items() if model is not None and key in _keys_at(tree, [name])]
        close = difflib.get_close_matches(key, _keys_at(tree, section), n=1, cutoff=0.6)
        if elsewhere and len(section) == 1:  # a key of another section: model.image_size given as train.image_size
            problem += f"; {key} belongs in the {elsewhere[0]} section: did you mean {elsewhere[0]}.{key}?"
        elif close:
            problem += f"; did you mean {'.'.join([*section, close[0]])}?"
        out.append(problem)
    return out


def validate_workflow(doc: Any, *, base_dir: str | os.PathLike = ".", source: str | None = None) -> dict:
    """Resolve defaults and check everything; returns the resolved workflow dict.

    Raises:
        ConfigError: with every problem found (unknown keys, wrong types, missing paths,
            steps that cannot run with the inputs given, invalid ``train`` options).
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError([f"a workflow must be a mapping of sections, not {type(doc).__name__}"], source)
    problems: list[str] = []
    top = {k: v for k, v in doc.items() if k not in SECTION_MODELS and k != "train"}
    wf = _valid_part(WorkflowFile, top, "", problems)
    steps_ok = not any(p.startswith("steps") for p in problems)
    for name, cls in SECTION_MODELS.items():
        wf[name] = _valid_part(cls, doc.get(name), name, problems)
    train = doc.get("train")
    if train is not None and not isinstance(train, Mapping):
        problems.append(f"train must be a mapping of TrainConfig options, not {type(train).__name__}")
        train = None
    wf["train"] = copy.deepcopy(dict(train or {}))
    _check_paths(wf, Path(base_dir), problems)
    if steps_ok:
        _check_steps(wf, problems)
    _check_train(wf, problems)
    if problems:
        raise ConfigError(suggest_keys(list(dict.fromkeys(problems))), source)
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


#: Where the shipped workflow files are looked for, in order: package data (an installed
#: wheel that ships them), then the ``workflows/`` folder beside the package (a source checkout
#: or an editable install).
SHIPPED_DIRS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[1] / "data" / "workflows",
    Path(__file__).resolve().parents[2] / "workflows",
)


def shipped_workflows() -> dict[str, Path]:
    """The workflows shipped with cxr_cad: ``{name (file stem): path}``, sorted by name."""
    found: dict[str, Path] = {}
    for folder in SHIPPED_DIRS:
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def find_workflow(text: str | os.PathLike) -> Path:
    """The workflow file ``text`` names: an existing file, else a shipped workflow's name
    (``chandola2021_pneumonia`` or ``chandola2021_pneumonia.yaml``).

    Raises UsageError (exit 2) naming the folder looked in and the shipped workflows, with the
    command that runs one by name.
    """
    path = Path(os.path.expanduser(os.fspath(text)))
    if path.is_file():
        return path
    shipped = shipped_workflows()
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    if path.parent == Path(".") and stem in shipped:
        return shipped[stem]
    if path.exists():
        raise UsageError(f"workflow {path} is not a regular file; give a workflow .yaml file")
    listing = ", ".join(f"{name} ({p})" for name, p in shipped.items()) or "none found"
    hint = ""
    if stem in shipped:
        hint = f"; to run the shipped one: cxr-cad run {stem}"
    else:
        close = difflib.get_close_matches(stem, list(shipped), n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean the shipped workflow {close[0]}: cxr-cad run {close[0]}"
    raise UsageError(
        f"workflow file {path} not found (relative paths start in {Path.cwd()}){hint}; "
        f"shipped workflows, run by name: {listing}"
    )


def workflow_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of workflow files, from the pydantic models.

    The ``train`` section is described by TrainConfig's schema without ``model`` and without
    ``data.classes``/``data.positive_class`` (those live in the top-level sections).
    """
    schema = WorkflowFile.model_json_schema()
    train = TrainConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    defs.update(train.pop("$defs", {}))
    data = defs["DataConfig"]
    defs["TrainDataConfig"] = {
        **data,
        "title": "TrainDataConfig",
        "properties": {k: v for k, v in data["properties"].items() if k not in ("classes", "positive_class")},
    }
    del defs["DataConfig"], defs["ModelConfig"]  # the model section is WorkflowModel
    props = {k: v for k, v in train["properties"].items() if k != "model"}
    props["data"] = {"$ref": "#/$defs/TrainDataConfig"}
    defs["TrainSection"] = {
        **train,
        "title": "TrainSection",
        "description": "TrainConfig options (docs/train.md) except model and data.classes/positive_class. "
        "With model.init: none, options not given follow the from-scratch recipe.",
        "properties": props,
    }
    schema["properties"]["train"] = {"$ref": "#/$defs/TrainSection"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


#: Where the generated JSON Schema is kept (in a source checkout).
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "workflow.schema.json"


def schema_text() -> str:
    """``docs/workflow.schema.json``'s exact text (pydantic's output can differ between its
    versions; the file says which). Written by ``python -m cxr_cad.cli.schema``."""
    import pydantic

    comment = f"generated by python -m cxr_cad.cli.schema (pydantic {pydantic.VERSION}); do not edit"
    return json_dumps({"$comment": comment, **workflow_json_schema()})
