"""The child bundle of an adaptation, its provenance, and the parent-vs-child comparison.

:func:`save_child` writes ``model.pt`` (the parent's network, or the refitted / fine-tuned
one, with the child's threshold record; ``parent_bundle_sha256``; ``extra["adaptation"]``: the
method, the site manifest, how the site rows were drawn, their count and hash) into the
output folder, ``site_rows.csv`` beside it and ``model_card.md`` with an Adaptation section.
:func:`compare` puts parent and child side by side on the same evaluation images (AUC with
DeLong CI, the paired DeLong test, sensitivity/specificity/balanced accuracy with Wilson CIs
at each model's own threshold); :func:`comparison_markdown` renders it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_cad.core.atomic import atomic_write_csv, atomic_write_text
from cxr_cad.manifest import manifest_hash
from cxr_cad.metrics import binary_metrics, delong_auc_ci, delong_paired_test, jsonable
from cxr_cad.model import Bundle, save_bundle
from cxr_cad.model.networks import head_of
from cxr_cad.modelcard import write_card_for_bundle

__all__ = [
    "BUNDLE_FILE",
    "SITE_ROWS_FILE",
    "compare",
    "comparison_markdown",
    "head_weights",
    "model_with_head",
    "operating_point",
    "save_child",
]

log = logging.getLogger(__name__)

BUNDLE_FILE = "model.pt"
SITE_ROWS_FILE = "site_rows.csv"


def _networks(model: torch.nn.Module) -> list[torch.nn.Module]:
    members = getattr(model, "members", None)
    return list(members) if members is not None else [model]


def head_weights(bundle: Bundle) -> list[tuple[np.ndarray, float]]:
    """Per network of the bundle: ``(w, b)`` of its positive-minus-negative logit (two classes)."""
    pos = bundle.positive_index
    neg = 1 - pos
    out = []
    for net in _networks(bundle.model):
        head = head_of(net)
        w = head.weight.detach().double().cpu().numpy()
        b = head.bias.detach().double().cpu().numpy()
        out.append((w[pos] - w[neg], float(b[pos] - b[neg])))
    return out


def model_with_head(bundle: Bundle, head: list[tuple[np.ndarray, float]]) -> torch.nn.Module:
    """A copy of the bundle's model whose heads give the logit difference ``w . x + b`` per network."""
    model = copy.deepcopy(bundle.model)
    pos, neg = bundle.positive_index, 1 - bundle.positive_index
    for net, (w, b) in zip(_networks(model), head):
        layer = head_of(net)
        with torch.no_grad():
            wt = torch.from_numpy(np.asarray(w) / 2).to(layer.weight.dtype)
            layer.weight[pos] = wt
            layer.weight[neg] = -wt
            layer.bias[pos] = b / 2
            layer.bias[neg] = -b / 2
    return model


def save_child(
    parent: Bundle,
    out_dir: Path,
    *,
    model: torch.nn.Module,
    threshold: float,
    policy: str,
    params: dict[str, Any],
    site: pd.DataFrame,
    adaptation: dict[str, Any],
    extra: dict[str, Any] | None = None,
    manifest_hash_value: str | None = None,
    train_config: dict | None = None,
) -> Path:
    """Write the child bundle, ``site_rows.csv`` and the model card into ``out_dir``; returns the bundle path."""
    from cxr_cad.adaptation.site import site_table

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = site_table(site)
    atomic_write_csv(out_dir / SITE_ROWS_FILE, rows)
    site_hash = manifest_hash(site)
    record = {
        **adaptation,
        "parent_bundle_sha256": parent.sha256,
        "parent_bundle": parent.path,
        "n_site": len(site),
        "site_manifest_hash": site_hash,
        "site_rows_file": SITE_ROWS_FILE,
    }
    parent_extra = dict(parent.meta.get("extra") or {})
    path = out_dir / BUNDLE_FILE
    save_bundle(
        path,
        model,
        classes=list(parent.classes),
        positive_class=parent.positive_class,
        transform_spec=parent.transform_spec,
        threshold=float(threshold),
        threshold_method=policy,
        threshold_params=params or {},
        threshold_chosen_on={
            "manifest_hash": site_hash,
            "n": len(site),
            "n_positive": int((site["label"].astype(str) == parent.positive_class).sum()),
            "n_negative": int((site["label"].astype(str) != parent.positive_class).sum()),
            "description": f"site rows of `cxr-cad adapt --method {adaptation['method']}` ({SITE_ROWS_FILE})",
        },
        manifest_hash=manifest_hash_value or parent.manifest_hash,
        parent_bundle_sha256=parent.sha256,
        train_config=train_config if train_config is not None else parent.train_config,
        init_record={"init": "bundle", "source": parent.path, "parent_bundle_sha256": parent.sha256},
        arch=parent.arch,
        extra={**parent_extra, **(extra or {}), "adaptation": record},
    )
    card = write_card_for_bundle(path)
    _append_card(card, record, threshold, policy)
    return path


def _append_card(card: Path, record: dict[str, Any], threshold: float, policy: str) -> None:
    lines = [
        "",
        "## Adaptation",
        "",
        f"This model is the `{record['method']}` adaptation (`cxr-cad adapt`, docs/adaptation.md) of the parent "
        f"bundle sha256 `{record['parent_bundle_sha256']}` to a site, learned from {record['n_site']} labelled site "
        f"images ({SITE_ROWS_FILE}; manifest hash `{record['site_manifest_hash'][:16]}`, drawn with "
        f"n-site {record.get('n_site_requested')}, seed {record.get('seed')}).",
        f"Decision threshold {threshold:.4g} ({policy}), chosen on those site images.",
        "Evaluate it only on images of other patients: the site images are not a test set.",
        "",
    ]
    atomic_write_text(card, card.read_text(encoding="utf-8") + "\n".join(lines))


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC (DeLong CI) and the decision metrics at ``threshold`` (Wilson CIs)."""
    auc = delong_auc_ci(y, p)
    m = binary_metrics(y, p, threshold=threshold)
    return {
        "threshold": float(threshold),
        "auc": auc.to_dict(),
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "balanced_accuracy": m["balanced_accuracy_ci"],
        "ppv": m["ppv"],
        "npv": m["npv"],
        "confusion": m["confusion"],
    }


def compare(
    y: np.ndarray,
    parent_p: np.ndarray,
    child_p: np.ndarray,
    parent_threshold: float,
    child_threshold: float,
    **info: Any,
) -> dict[str, Any]:
    """Parent vs child on the same images: each one's :func:`operating_point` and the paired DeLong test."""
    test = delong_paired_test(y, child_p, parent_p)
    return jsonable(
        {
            **info,
            "n": len(y),
            "n_positive": int(np.sum(y)),
            "parent": operating_point(y, parent_p, parent_threshold),
            "child": operating_point(y, child_p, child_threshold),
            "paired_delong_child_minus_parent": test.to_dict(),
        }
    )


def _fmt(d: dict[str, Any]) -> str:
    v, lo, hi = d.get("value", d.get("auc")), d.get("low"), d.get("high")
    if v is None:
        return "n/a"
    return f"{v:.3f} ({lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else f"{v:.3f}"


def _num(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def comparison_markdown(c: dict[str, Any]) -> str:
    """The comparison as a short markdown page."""
    rows = [
        ("threshold", f"{c['parent']['threshold']:.4g}", f"{c['child']['threshold']:.4g}"),
        ("AUC (95% CI, DeLong)", _fmt(c["parent"]["auc"]), _fmt(c["child"]["auc"])),
    ]
    for key in ("sensitivity", "specificity", "balanced_accuracy", "ppv", "npv"):
        rows.append((key.replace("_", " "), _fmt(c["parent"][key]), _fmt(c["child"][key])))
    t = c["paired_delong_child_minus_parent"]
    lines = [
        f"# Adaptation `{c.get('method')}`: parent vs child",
        "",
        f"{c['n']} evaluation images ({c['n_positive']} positive), none of them a site image or an image of a "
        f"site patient ({c.get('n_excluded', 0)} excluded). Each model at its own threshold.",
        "",
        "| | parent | child |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {d} |" for a, b, d in rows],
        "",
        f"Paired DeLong test, AUC child - parent: {_num(t['diff'], '+.4f')} "
        f"(95% CI {_num(t['low'], '+.4f')} to {_num(t['high'], '+.4f')}), p = {_num(t['p_value'], '.3g')}"
        + (" (the two models rank these images identically)." if t["p_value"] is None else "."),
        "",
    ]
    return "\n".join(lines)
