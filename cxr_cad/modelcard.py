"""The model card: a human-readable ``model_card.md`` beside every bundle.

:func:`write_model_card` is called by ``save_bundle`` with the bundle's metadata. It reads
what the run folder holds beside the bundle (``split.csv``: images, classes and patients
per split; ``val_predictions.csv``: validation AUC with its DeLong CI and sensitivity /
specificity at the threshold with Wilson CIs) and, when given the training manifest, the
``ingest.json`` written beside it by ``cxr-cad ingest`` (sources, acceptance policy). No
patient identifiers are written: only counts. ``cxr-cad evaluate`` never edits the card;
its report links it (:func:`model_card_path`). Every export carries the card
(:func:`card_for_export`: the one beside the bundle, else rendered from the bundle itself).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.metrics import binary_metrics, delong_auc_ci
from cxr_cad.model.bundle import load_bundle

log = logging.getLogger(__name__)

CARD_NAME = "model_card.md"


def model_card_path(bundle_path: str | os.PathLike) -> Path:
    """``model_card.md`` beside ``model.pt``; ``<stem>.model_card.md`` beside any other bundle name."""
    p = Path(bundle_path)
    return p.with_name(CARD_NAME if p.stem == "model" else f"{p.stem}.{CARD_NAME}")


def _fmt(v: Any, digits: int = 4) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(f) else f"{f:.{digits}f}"


def _training_data(folder: Path, meta: dict, manifest: Path | None) -> list[str]:
    lines = ["## Training data", "", f"- Manifest hash: `{meta.get('manifest_hash', 'n/a')}`"]
    split = folder / "split.csv"
    if split.is_file():
        df = pd.read_csv(split, dtype=str, keep_default_na=False)
        group = next((c for c in df.columns if c not in ("sop_instance_uid", "label", "split")), None)
        lines += [
            "",
            "| split | images | " + " | ".join(meta.get("classes", [])) + " | patients |",
            "|---|---|" + "---|" * len(meta.get("classes", [])) + "---|",
        ]
        for name, part in df.groupby("split", sort=False):
            counts = part["label"].value_counts() if "label" in part else pd.Series(dtype=int)
            lines.append(
                f"| {name} | {len(part)} | "
                + " | ".join(str(int(counts.get(c, 0))) for c in meta.get("classes", []))
                + f" | {part[group].nunique() if group else 'n/a'} |"
            )
        lines.append("")
        lines.append("Training and validation are disjoint by patient." if group else "")
    else:
        n = ((meta.get("extra") or {}).get("training") or {}).get("n_train")
        lines.append(
            f"- Images used for training: {n if n is not None else 'not recorded'} (no split.csv beside the bundle)"
        )
    ingest = manifest.parent / "ingest.json" if manifest is not None else None
    if ingest is not None and ingest.is_file():
        rec = json.loads(ingest.read_text(encoding="utf-8"))
        lines += [
            f"- Sources recorded at ingest: {', '.join(Path(s).name for s in rec.get('sources', []))}",
            f"- Acceptance policy at ingest: {json.dumps(rec.get('policy', {}), sort_keys=True)}",
            f"- Labels from: {json.dumps(rec.get('labels', {}), sort_keys=True)}",
        ]
    else:
        lines.append(
            "- Sources recorded at ingest: not known to the bundle (the card is rewritten with them "
            "when `cxr-cad train` is given a manifest written by `cxr-cad ingest`)"
        )
    return lines + [""]


def _validation_multilabel(meta: dict) -> list[str]:
    ml = (meta.get("extra") or {}).get("multilabel") or {}
    lines = ["## Validation (multi-label)", "", f"Selection: {ml.get('selection')}.", ""]
    lines += ["| finding | threshold | method | validation positives |", "|---|---|---|---|"]
    for f, t in (ml.get("thresholds") or {}).items():
        lines.append(f"| {f} | {t['value']:.4f} | {t['method']} | {t.get('n_positive')} |")
    return lines + [""]


def _validation(folder: Path, meta: dict) -> list[str]:
    lines = ["## Validation metrics", ""]
    path = folder / "val_predictions.csv"
    if not path.is_file():
        return lines + ["No validation predictions beside the bundle: no validation metrics.", ""]
    df = pd.read_csv(path)
    if "y_true" not in df.columns:  # multi-label: per-finding numbers are in the run's report
        return _validation_multilabel(meta)
    y, p = df["y_true"].to_numpy(int), df["probability"].to_numpy(float)
    ci = delong_auc_ci(y, p)
    m = binary_metrics(y, p, threshold=float(meta["threshold"]))
    lines += [
        f"On the internal validation split ({len(y)} images, {int(y.sum())} positive), 95% CIs:",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
        f"| AUC (DeLong) | {_fmt(ci.auc)} | {_fmt(ci.low)}-{_fmt(ci.high)} |",
    ]
    for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        v = m[name]
        lines.append(f"| {name} at threshold (Wilson) | {_fmt(v['value'])} | {_fmt(v['low'])}-{_fmt(v['high'])} |")
    lines += ["", "The threshold was chosen on this same split, so these operating-point figures are optimistic.", ""]
    return lines


_CRITERIA = {
    "auc_then_loss": "the highest validation AUC, ties (e.g. a saturated AUC of 1.0) broken by the lowest "
    "validation loss",
    "loss": "the lowest validation loss",
}


def _selection(meta: dict) -> list[str]:
    """How the kept epoch was chosen, and every guard ``--force`` overrode (cxr_cad.training.guards)."""
    training = (meta.get("extra") or {}).get("training")
    if not isinstance(training, dict):
        return []
    sel = training.get("selection") or {}
    criterion = sel.get("criterion", "validation AUC (bundles written before the criterion was recorded)")
    lines = [
        "## Model selection",
        "",
        f"- Kept epoch {training.get('best_epoch', 'n/a')} of {training.get('epochs_run', 'n/a')} run"
        f"{' (stopped early)' if training.get('stopped_early') else ''}: {_CRITERIA.get(criterion, criterion)}.",
        f"- Validation AUC {_fmt(training.get('val_auc'))}, validation loss {_fmt(sel.get('best_val_loss'))} "
        "at that epoch.",
        "",
    ]
    forced = training.get("forced") or []
    if forced:
        lines += [
            "## Guards overridden (--force)",
            "",
            "cxr_cad would have refused this model; it was kept because training was run with `--force`:",
            "",
            *[f"- forced: {f}" for f in forced],
            "",
        ]
    return lines


def _int8_variant(folder: Path) -> list[str]:
    """The int8 variant stored beside the bundle (``model.int8/int8.json``, ``train --int8``;
    written by :mod:`cxr_cad.export.variant`), or nothing."""
    try:
        record = json.loads((folder / "model.int8" / "int8.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    v = record.get("verification") or {}
    status = "accepted" if v.get("accepted") else "refused: " + "; ".join(v.get("reasons") or [])
    lines = [
        "## int8 variant",
        "",
        "`model.int8/` beside the bundle (`train --int8`); used only by `cxr-cad predict --backend auto --allow-int8`.",
        "",
        "| | |",
        "|---|---|",
        f"| status | {status} |",
    ]
    if v.get("n_validation"):
        lines += [
            f"| calibrated on | {v['n_calibration']} {v.get('calibrated_on', '')}, {v.get('calibration_method', '')} |",
            f"| verified on | {v['n_validation']} images of the {v.get('verified_on', '')} |",
            f"| AUC fp32 -> int8 | {_fmt(v['auc_fp32'])} -> {_fmt(v['auc_int8'])} (limit: a drop of "
            f"{v['max_auc_drop']}) |",
            f"| decisions changed at threshold {_fmt(v['threshold'])} | {v['decisions_changed']} "
            f"({100 * v['decisions_changed_fraction']:.2f}%; limit {100 * v['max_decision_change']:.2f}%) |",
            f"| probability change, max / p99 | {_fmt(v['prob_change_max'])} / {_fmt(v['prob_change_p99'])} |",
        ]
    return lines + [""]


def render_model_card(meta: dict, folder: Path, manifest: Path | None = None) -> str:
    """The card's Markdown for a bundle's metadata (``save_bundle``'s payload)."""
    arch, spec, init = meta.get("arch", {}), meta.get("transform_spec", {}), meta.get("init") or {}
    sel = meta.get("threshold_selection", {})
    pos, classes = meta.get("positive_class"), meta.get("classes", [])
    lines = [
        f"# Model card: {' vs '.join(classes)} chest radiograph classifier",
        "",
        f"Bundle written {meta.get('created', '?')} by cxr_cad {meta.get('versions', {}).get('cxr_cad', '?')}.",
        "",
        "## Intended use",
        "",
        f"Research and second-reader decision support: the probability that a frontal (PA/AP) chest radiograph "
        f"shows {pos}, for images like those it was trained on. A clinician makes every decision.",
        "",
        "## Out-of-scope use",
        "",
        "- Not a medical device; not for diagnosis without a clinician, triage, or screening programmes.",
        "- Lateral views, non-chest images, CT/MR, and populations, scanners or sites unlike the training data "
        "(e.g. adults for a paediatric training set).",
        f"- Any finding other than {pos} ({', '.join(c for c in classes if c != pos)} means only "
        f"'not {pos}', not 'normal' in general).",
        "",
    ]
    lines += _training_data(folder, meta, manifest)
    lines += [
        "## Architecture and initialisation",
        "",
        f"- {arch.get('name', '?')} ({arch.get('impl', '?')}), {arch.get('in_channels', '?')} input channel(s), "
        f"{arch.get('num_classes', '?')} outputs (softmax over {classes}).",
        f"- Initialisation: {json.dumps(init, sort_keys=True, default=str)}",
        f"- Parent bundle sha256: {meta.get('parent_bundle_sha256') or 'none'}",
        "",
        "## Preprocessing",
        "",
        "The eval transform chain stored in the bundle (`transform_spec`):",
        "",
        "```json",
        json.dumps(spec, indent=2, sort_keys=True),
        "```",
        "",
    ]
    lines += _validation(folder, meta)
    lines += _selection(meta)
    lines += _int8_variant(folder)
    lines += [
        "## Threshold provenance",
        "",
        f"- Threshold {_fmt(meta.get('threshold'), 6)} on the {pos} probability (called positive at >=).",
        f"- Method: {sel.get('method', '?')}, parameters {json.dumps(sel.get('params', {}), sort_keys=True)}",
        f"- Chosen on: {json.dumps(sel.get('chosen_on'), sort_keys=True, default=str)}",
        "",
        "## Known limitations",
        "",
        "- No external validation: the figures above come from an internal split of the training cohort. "
        "Evaluate on data from the intended site (`cxr-cad evaluate`) before any use; its report links "
        "this card and holds the external figures.",
        "- Probabilities are not calibrated for other prevalences.",
        "- Performance on subgroups (age, sex, scanner) is unknown unless evaluated.",
        "",
        "## Software versions",
        "",
        "| package | version |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in sorted((meta.get("versions") or {}).items())]
    return "\n".join(lines) + "\n"


def write_model_card(bundle_path: str | os.PathLike, meta: dict, *, manifest: str | os.PathLike | None = None) -> Path:
    """Write :func:`model_card_path` for the bundle at ``bundle_path`` (atomic). Returns its path."""
    bundle_path = Path(bundle_path)
    path = model_card_path(bundle_path)
    text = render_model_card(
        {k: v for k, v in meta.items() if k != "state_dict"},
        bundle_path.parent,
        Path(manifest) if manifest is not None else None,
    )
    atomic_write_text(path, text, hint="the model card could not be written; check free space and permissions")
    log.info("wrote model card %s", path)
    return path


def add_manifest_to_card(bundle_path: str | os.PathLike, manifest: str | os.PathLike) -> Path:
    """Rewrite the card of a finished training run with the sources recorded at ingest of ``manifest``."""
    return write_model_card(bundle_path, load_bundle(bundle_path).meta, manifest=manifest)


def card_for_export(bundle_path: str | os.PathLike, meta: dict | None = None) -> tuple[str, str]:
    """``(card text, where it came from)`` for an export of the bundle at ``bundle_path``:
    :func:`model_card_path` when it exists (``"beside the bundle"``), else the full card rendered
    from the bundle's own metadata (``meta``, read from the file when None) and what its folder
    holds, headed by a note that says so (``"generated from the bundle"``). Writes nothing."""
    path = Path(bundle_path)
    card = model_card_path(path)
    if card.is_file():
        return card.read_text(encoding="utf-8"), "beside the bundle"
    meta = load_bundle(path).meta if meta is None else meta
    text = render_model_card({k: v for k, v in meta.items() if k != "state_dict"}, path.parent)
    title, _, rest = text.partition("\n")
    note = (
        f"> Generated from the bundle `{path.name}` when it was exported: no `{card.name}` sat beside it. "
        "Validation figures and split counts appear only when the bundle's run folder held them."
    )
    return f"{title}\n\n{note}\n{rest}", "generated from the bundle"


def write_card_for_bundle(bundle_path: str | os.PathLike) -> Path:
    """``model_card.md`` beside the bundle just saved at ``bundle_path``, from its own metadata
    (every bundle a run writes gets one: training, cross-validation final models)."""
    return write_model_card(bundle_path, load_bundle(bundle_path).meta)
