"""Grad-CAM gallery: which image regions drove the score, for a few chosen cases.

Uses MONAI's :class:`monai.visualize.GradCAM` on the network's last feature stage (its
registry entry's ``target_layer``: ``layer4`` for the ResNets, ``class_layers.relu`` for
DenseNet121) with respect to the positive-class logit. Cases are chosen from the predictions at the
report's decision threshold: the most confident true positives and true negatives and
the worst false positives (highest score) and false negatives (lowest score). Each
picture is written with PIL (no text metadata); captions carry the image's row number
in ``predictions.csv``, never a patient identifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from PIL import Image

from cxr_cad.config.transforms import TransformSpec
from cxr_cad.errors import RejectedFile
from cxr_cad.model.networks import layout_arch
from cxr_cad.model.registry import ARCHITECTURES, DEFAULT_ARCH, get_arch
from cxr_cad.transforms import build_load_transforms, build_post_transforms

if TYPE_CHECKING:
    from cxr_cad.model.bundle import Bundle

log = logging.getLogger(__name__)

#: The default network's Grad-CAM layer (kept for callers; each network's is in its registry entry).
TARGET_LAYER = get_arch(DEFAULT_ARCH).target_layer
GROUPS = (
    ("tp", "True positive (most confident)"),
    ("tn", "True negative (most confident)"),
    ("fp", "False positive (worst)"),
    ("fn", "False negative (worst)"),
)


@dataclass
class GradcamSource:
    """What Grad-CAM needs: the model, its eval transform spec and the positive-class index.

    ``path_col`` names the predictions column holding each image's file path;
    ``target_layer`` the layer the maps are taken at (None: the registry entry's for the network
    ``model`` is).
    """

    model: torch.nn.Module
    transform_spec: TransformSpec
    positive_index: int
    path_col: str = "path"
    n_per_group: int = 2
    target_layer: str | None = None

    @classmethod
    def from_bundle(cls, bundle: Bundle, **kwargs: Any) -> GradcamSource:
        """From a loaded :class:`cxr_cad.model.Bundle` (its architecture's Grad-CAM layer)."""
        arch = ARCHITECTURES.get(getattr(bundle, "arch", DEFAULT_ARCH))
        kwargs.setdefault("target_layer", arch.target_layer if arch is not None else None)
        return cls(bundle.model, bundle.transform_spec, int(bundle.positive_index), **kwargs)

    def layer(self) -> str:
        """The Grad-CAM layer: ``target_layer``, or the registry entry's of the model's network."""
        if self.target_layer is not None:
            return self.target_layer
        spec = layout_arch(self.model)
        return spec.target_layer if spec is not None else TARGET_LAYER


def select_cases(ev: pd.DataFrame, threshold: float, n_per_group: int) -> list[tuple[str, pd.Series]]:
    """Pick up to ``n_per_group`` rows for each of TP, TN, FP, FN (decision ``score >= threshold``).

    TP sorted by score descending, TN ascending, FP descending, FN ascending; ties broken by
    ``image_index`` so the choice is reproducible.
    """
    called = ev["score"] >= threshold
    y = ev["y_true"] == 1
    groups = {
        "tp": (ev[called & y], False),
        "tn": (ev[~called & ~y], True),
        "fp": (ev[called & ~y], False),
        "fn": (ev[~called & y], True),
    }
    out = []
    for key, _ in GROUPS:
        frame, ascending = groups[key]
        frame = frame.sort_values(["score", "image_index"], ascending=[ascending, True], kind="mergesort")
        out += [(key, row) for _, row in frame.head(n_per_group).iterrows()]
    return out


def _colour_bar(height: int, width: int = 14) -> np.ndarray:
    """A vertical "jet" bar, the map's maximum at the top and zero at the bottom, (H, W, 3) in [0, 1]."""
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1)
    return colormaps["jet"](ramp)[..., :3]


def _overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45, min_size: int = 320) -> Image.Image:
    """Side by side: the model-input radiograph, the same with the heatmap blended on top, and a
    colour bar labelled "max" (top) and "0" (bottom). Small model inputs are enlarged (bilinear)
    to at least ``min_size`` pixels so the tiles read at report size."""
    g = np.clip(gray, 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=2)
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    blend = (1 - alpha) * rgb + alpha * colour
    pair = np.concatenate([rgb, np.ones((g.shape[0], 4, 3)), blend], axis=1)
    img = Image.fromarray((pair * 255).round().astype(np.uint8), mode="RGB")
    scale = max(1.0, min_size / g.shape[0])
    if scale > 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    from PIL import ImageDraw, ImageFont

    pad, bar_w, label_w = 6, 14, 30
    bar = Image.fromarray((_colour_bar(img.height - 2 * pad, bar_w) * 255).round().astype(np.uint8), mode="RGB")
    canvas = Image.new("RGB", (img.width + pad + bar_w + label_w, img.height), "white")
    canvas.paste(img, (0, 0))
    canvas.paste(bar, (img.width + pad, pad))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x = img.width + pad + bar_w + 3
    draw.text((x, pad), "max", fill="black", font=font)
    draw.text((x, img.height - pad - 12), "0", fill="black", font=font)
    return canvas


def unit_normalizer(x: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] with its minimum at 0 and its maximum at 1 (hot = most evidence).

    MONAI's ``default_normalizer`` maps (min, max) to (1, 0), i.e. it *flips* the map, which
    drawn with a "jet" colour map would paint the regions that drive the prediction cold.
    A constant map becomes all zeros.
    """
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


def gradcam_maps(
    source: GradcamSource, paths: list[str], *, target_index: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each file: (display image (S, S) in [0, 1], Grad-CAM map (S, S) in [0, 1]) of the
    output ``target_index`` (default the positive class; a multi-label model's finding index,
    whose logit is that finding's log-odds).

    Raises :class:`~cxr_cad.errors.RejectedFile` when an image cannot be read.
    """
    from monai.transforms import Compose
    from monai.visualize import GradCAM

    spec = source.transform_spec
    load, post = Compose(build_load_transforms(spec)), Compose(build_post_transforms(spec))
    model = source.model.eval()
    model = getattr(model, "members", [model])[0]  # an ensemble / TTA bundle: its first network's map
    cam = GradCAM(nn_module=model, target_layers=source.layer(), postprocessing=unit_normalizer)
    out = []
    for p in paths:
        shown = load({"image": p})["image"]
        x = post({"image": shown.clone()})["image"]
        x = (x.as_tensor() if hasattr(x, "as_tensor") else x)[None].float()
        with torch.enable_grad():
            heat = cam(x, class_idx=source.positive_index if target_index is None else target_index)
        out.append(
            (shown[0].detach().cpu().numpy().astype(np.float32), heat[0, 0].detach().cpu().numpy().astype(np.float32))
        )
    return out


def write_gallery(source: GradcamSource, ev: pd.DataFrame, threshold: float, out_dir: Path) -> dict:
    """Write ``gradcam_<group>_<k>.png`` for the selected cases; returns the report's gradcam dict.

    The dict has ``note`` and ``cases`` (group, image_index, score, label, file, caption).
    A case whose image can no longer be read is left out and named in the note.
    """
    if source.path_col not in ev.columns:
        return {
            "cases": [],
            "note": f"Grad-CAM skipped: the predictions carry no {source.path_col!r} column to find the images.",
        }
    cases = select_cases(ev, threshold, source.n_per_group)
    names = dict(GROUPS)
    out, failed = [], []
    counters: dict[str, int] = {}
    for key, row in cases:
        try:
            ((gray, heat),) = gradcam_maps(source, [str(row[source.path_col])])
        except RejectedFile as exc:
            log.warning("Grad-CAM: image #%d cannot be read (%s)", int(row["image_index"]), exc.reason)
            failed.append(f"#{int(row['image_index'])} ({exc.reason})")
            continue
        counters[key] = counters.get(key, 0) + 1
        fname = f"gradcam_{key}_{counters[key]}.png"
        _overlay(gray, heat).save(Path(out_dir) / fname, format="PNG")
        out.append(
            {
                "group": key,
                "image_index": int(row["image_index"]),
                "score": float(row["score"]),
                "label": str(row["label"]),
                "file": fname,
                "caption": f"{names[key]}: image #{int(row['image_index'])}, truly {row['label']}, "
                f"score {float(row['score']):.3f}",
            }
        )
    missing = [names[k].split(" (")[0].lower() + "s" for k, _ in GROUPS if k not in counters]
    layer = source.layer()
    note = (
        f"Grad-CAM (MONAI GradCAM on the network's last feature stage, '{layer}', for the positive-class "
        f"output) at threshold {threshold:.6g}. Left: the image as the model sees it; right: the "
        "heatmap (red = strongest influence on the score; colour bar from 0 to the map's maximum). "
        "Each map is scaled to its own maximum, so colours cannot be compared between images, and an "
        "all-blue map means the image held no positive evidence. Image numbers are rows of "
        "predictions.csv."
    )
    if missing:
        note += f" No {', '.join(missing)} in this cohort."
    if failed:
        note += f" Not shown because the image could not be read: {', '.join(failed)}."
    return {"cases": out, "note": note, "threshold": threshold, "target_layer": layer}


def write_finding_gallery(
    source: GradcamSource,
    scores: pd.DataFrame,
    findings: list[tuple[str, float]],
    out_dir: Path,
    n_per_finding: int,
) -> dict:
    """Grad-CAM of a multi-label model's positive calls: for each finding (output index = its
    position in ``findings``, ``[(name, stored threshold)]``), up to ``n_per_finding`` images whose
    ``probability_<F>`` is at or above the threshold, most confident first (ties by
    ``image_index``). Writes ``gradcam_f<k>_<j>.png`` into ``out_dir``; returns ``note``, ``cases``
    (finding, image_index, score, file, caption) and ``threshold`` per finding. An image that can
    no longer be read is left out and named in the note."""
    out, failed, none_called = [], [], []
    for k, (name, threshold) in enumerate(findings):
        col = f"probability_{name}"
        called = scores[pd.to_numeric(scores[col], errors="coerce") >= threshold].copy()
        called["_score"] = pd.to_numeric(called[col])
        called = called.sort_values(["_score", "image_index"], ascending=[False, True], kind="mergesort")
        if called.empty:
            none_called.append(name)
        for j, (_, row) in enumerate(called.head(n_per_finding).iterrows(), start=1):
            try:
                ((gray, heat),) = gradcam_maps(source, [str(row[source.path_col])], target_index=k)
            except RejectedFile as exc:
                failed.append(f"{name} #{int(row['image_index'])} ({exc.reason})")
                continue
            fname = f"gradcam_f{k}_{j}.png"
            _overlay(gray, heat).save(Path(out_dir) / fname, format="PNG")
            out.append(
                {
                    "finding": name,
                    "image_index": int(row["image_index"]),
                    "score": float(row["_score"]),
                    "file": fname,
                    "caption": f"{name}: image #{int(row['image_index'])}, probability {float(row['_score']):.3f} "
                    f"(threshold {threshold:.3g})",
                }
            )
    note = (
        f"Grad-CAM (MONAI GradCAM on the network's last feature stage, '{source.layer()}') of each finding's "
        f"own output (its log-odds), for up to {n_per_finding} positive calls per finding at that finding's "
        "stored threshold, most confident first. Left: the image as the model sees it; right: the heatmap "
        "(red = strongest influence; each map scaled to its own maximum). Image numbers are rows of "
        "predictions.csv."
    )
    if none_called:
        note += f" No positive call for: {', '.join(none_called)}."
    if failed:
        note += f" Not shown because the image could not be read: {', '.join(failed)}."
    return {"cases": out, "note": note, "thresholds": {f: t for f, t in findings}, "target_layer": source.layer()}


#: What one Secondary Capture heatmap is (``logodds_map``): Grad-CAM of the positive class's
#: log-odds at the feature stage's resolution, in log-odds units (below).
@dataclass
class LogoddsCam:
    """Grad-CAM of one image at the network's feature resolution, on a fixed scale.

    ``cam[i, j]`` is the cell's contribution to the positive class's log-odds
    ``log(p / (1 - p))``, multiplied by the number of cells: for a network that pools its last
    feature stage globally before a linear head (every registered network), the mean of the
    signed map plus the head's bias is exactly the image's log-odds, so one unit means the
    same amount of evidence in every image (a global scale, unlike :func:`unit_normalizer`).
    Negative cells (evidence against) are set to 0. ``image`` is the model input (S, S) in
    [0, 1]; ``logodds`` the log-odds the map explains.
    """

    image: np.ndarray
    cam: np.ndarray
    logodds: float


class _Taps:
    """Forward/backward hooks on one layer: its activation and the gradient at it."""

    def __init__(self, layer: torch.nn.Module):
        self.act: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None
        self._handles = [layer.register_forward_hook(self._forward)]

    def _forward(self, _module, _inputs, output) -> None:
        self.act = output
        output.register_hook(self._backward)

    def _backward(self, grad: torch.Tensor) -> None:
        self.grad = grad

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def logodds_maps(source: GradcamSource, paths: list[str], *, target_index: int | None = None) -> list[LogoddsCam]:
    """:class:`LogoddsCam` of each file (one forward and one backward pass each, no upsampling).

    ``target_index``: a multi-label (one sigmoid per finding) model's finding: its logit is the
    finding's log-odds. Default: the positive class of a softmax model (its logit minus the
    log-sum-exp of the others).

    Raises :class:`~cxr_cad.errors.RejectedFile` when an image cannot be read.
    """
    from monai.transforms import Compose

    spec = source.transform_spec
    load, post = Compose(build_load_transforms(spec)), Compose(build_post_transforms(spec))
    model = source.model.eval()
    model = getattr(model, "members", [model])[0]  # an ensemble / TTA bundle: its first network's map
    taps = _Taps(model.get_submodule(source.layer()))
    out = []
    try:
        for p in paths:
            shown = load({"image": p})["image"]
            x = post({"image": shown.clone()})["image"]
            x = (x.as_tensor() if hasattr(x, "as_tensor") else x)[None].float()
            with torch.enable_grad():
                z = model(x)[0].float()
                if target_index is not None:
                    logodds = z[target_index]
                else:
                    k = source.positive_index
                    others = torch.cat([z[:k], z[k + 1 :]])
                    logodds = z[k] - torch.logsumexp(others, 0) if len(others) else z[k]
                model.zero_grad(set_to_none=True)
                logodds.backward()
            assert taps.act is not None and taps.grad is not None
            act, grad = taps.act.detach()[0].float(), taps.grad.detach()[0].float()
            n_cells = act.shape[-1] * act.shape[-2]
            weights = grad.mean(dim=(-2, -1))  # = head weight / n_cells for pooled linear heads
            cam = torch.relu((weights[:, None, None] * act).sum(0)) * n_cells
            out.append(
                LogoddsCam(
                    shown[0].detach().cpu().numpy().astype(np.float32),
                    cam.cpu().numpy().astype(np.float32),
                    float(logodds.detach()),
                )
            )
    finally:
        taps.close()
    return out
