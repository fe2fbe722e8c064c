"""Workflow files: reading and validation.

A workflow is a YAML mapping (read with ``yaml.safe_load``) whose sections are the models of
:mod:`cxr_cad.workflow.sections` (:class:`~cxr_cad.workflow.sections.WorkflowFile`; JSON
Schema in ``docs/workflow.schema.json``). :func:`load_workflow` returns the resolved
workflow as a plain nested dict with every default filled in, or raises one
:class:`~cxr_cad.errors.ConfigError` listing every problem (unknown keys, wrong types,
missing paths, bad step lists) before anything runs. The ``train`` section is checked by
:class:`cxr_cad.config.TrainConfig`.

Beside this module: ``${ENV}`` expansion and ``--set`` overrides (:mod:`cxr_cad.workflow.overrides`);
unknown keys reported with the closest valid key (:func:`cxr_cad.workflow.suggest.suggest_keys`:
``train.epoch: unknown key (check the spelling); did you mean train.epochs?``); a workflow file
found by path or by the name of a shipped workflow (:mod:`cxr_cad.workflow.shipped`:
``cxr-cad run chandola2021_pneumonia``); the JSON Schema, written (or checked) by ``python -m
cxr_cad.cli.schema [--check]`` (:mod:`cxr_cad.workflow.json_schema`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cxr_cad.config import ModelConfig, TrainConfig, read_yaml_mapping
from cxr_cad.config.base import validation_problems
from cxr_cad.config.types import ConfigModel
from cxr_cad.errors import BundleError, ConfigError
from cxr_cad.workflow.overrides import apply_sets, expand_env, parse_set
from cxr_cad.workflow.sections import SECTION_MODELS, STEP_NAMES, WorkflowFile
from cxr_cad.workflow.suggest import suggest_keys

__all__ = [
    "SCHEMA",
    "STEP_NAMES",
    "WorkflowFile",
    "load_workflow",
    "validate_workflow",
    "train_config_dict",
]

#: The workflow file model (it replaced a hand-written table of kinds and defaults).
SCHEMA = WorkflowFile

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


def _parent_image_size(wf: dict, given_model: Any) -> None:
    """Fine-tuning a parent bundle (``model.init``: ``bundle`` or a bundle path) with no
    ``model.image_size`` given: the parent's input size, not the default 224 (the training
    run's parent guard refuses any other size). Torch is imported only in that case."""
    if not {"crossval", "train"} & set(wf["steps"]):
        return
    if isinstance(given_model, Mapping) and "image_size" in given_model:
        return
    init = wf["model"]["init"]
    if init in ("imagenet", "none") or init.startswith("imagenet:"):
        return
    path = wf["model"]["bundle"] if init == "bundle" else init
    if path is None or not Path(path).is_file():
        return  # _check_paths / _check_steps name it
    from cxr_cad.model import load_bundle

    try:
        parent = load_bundle(path)
    except BundleError:
        return  # a weights file, not a bundle (or a broken one: the train step names it)
    wf["model"]["image_size"] = int(parent.transform_spec.image_size)


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
        _parent_image_size(wf, doc.get("model"))
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
