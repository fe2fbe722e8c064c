"""Score a list of images once with a bundle, keeping each network's penultimate features:
what site adaptation (:mod:`cxr_cad.adaptation`) works from.

The images go through the prediction engine's own decode and eval chain
(:class:`~cxr_cad.inference.inputs.PredictDataset`) and the prepared inference model
(:func:`~cxr_cad.inference.model.prepare_for_inference`: folded BatchNorm, the runtime's
precision), so ``probability`` is what ``cxr-cad predict`` writes for the bundle without a
calibration. An ensemble / hflip-TTA bundle (:class:`cxr_cad.model.ProbabilityAverage`) is
scored member by member and view by view: ``features[i, m, v]`` is member ``m``'s head input
for view ``v`` (0: the image, 1: flipped) and the raw probability is the mean of their
softmax outputs, exactly as the bundle's forward averages them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cxr_cad import runtime
from cxr_cad.config import AcceptPolicy
from cxr_cad.core.progress import progress
from cxr_cad.inference.inputs import PredictDataset, PredictInput, collate_records
from cxr_cad.inference.model import prepare_for_inference
from cxr_cad.model import Bundle
from cxr_cad.shift.monitor import FeatureTap

__all__ = ["FeatureScores", "score_features"]

log = logging.getLogger(__name__)


@dataclass
class FeatureScores:
    """One scoring pass over ``paths``.

    Attributes:
        paths: the inputs, in order.
        ok: which inputs were scored (bool per path); the others are in ``rejected``.
        probability: raw positive-class probability per scored input (float64, ``(n_ok,)``).
        logits: per member and view, ``(n_ok, members, views, K)`` float32.
        features: per member and view, ``(n_ok, members, views, d)`` float32.
        rejected: ``{"path", "reason", "detail"}`` per input that could not be scored.
    """

    paths: list[str]
    ok: np.ndarray
    probability: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    rejected: list[dict[str, str]] = field(default_factory=list)


def _networks(model: torch.nn.Module) -> tuple[list[torch.nn.Module], bool]:
    members = getattr(model, "members", None)
    if members is not None:
        return list(members), bool(getattr(model, "hflip", False))
    return [model], False


@torch.inference_mode()
def score_features(
    bundle: Bundle,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: str = "auto",
    precision: str = "auto",
    policy: AcceptPolicy | None = None,
) -> FeatureScores:
    """Raw probabilities, per-network logits and penultimate features of ``paths`` under ``bundle``."""
    info = runtime.resolve_runtime(device, precision)
    info = runtime.RuntimeInfo(info.device, info.precision, info.channels_last)  # single process
    model = prepare_for_inference(bundle.model, info)
    nets, hflip = _networks(model)
    spec = bundle.transform_spec
    inputs = [PredictInput(i, str(p)) for i, p in enumerate(paths)]
    pol = dataclasses.replace(policy or AcceptPolicy(), apply_voi=spec.apply_voi)
    loader = torch.utils.data.DataLoader(
        PredictDataset(inputs, pol, spec),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_records,
        num_workers=workers,
    )
    taps = [FeatureTap(net) for net in nets]
    ok = np.zeros(len(inputs), bool)
    logits_all, feats_all, rejected = [], [], []
    try:
        for tap in taps:
            tap.__enter__()
        with progress(total=len(inputs), desc="score", unit="img") as bar:
            for batch in loader:
                for rej in batch["rejected"]:
                    rejected.append(
                        {"path": str(paths[rej["index"]]), "reason": rej["reason"], "detail": rej["detail"]}
                    )
                if batch["images"] is not None:
                    x = runtime.to_device(batch["images"], info)
                    views = (x, torch.flip(x, dims=(-1,))) if hflip else (x,)
                    lg = torch.zeros(x.shape[0], len(nets), len(views), len(bundle.classes))
                    ft: list[list[np.ndarray]] = []
                    for m, (net, tap) in enumerate(zip(nets, taps)):
                        ft.append([])
                        for v, view in enumerate(views):
                            with runtime.autocast(info):
                                out = net(view)
                            lg[:, m, v] = out.float().cpu()
                            f = tap.pop()
                            assert f is not None  # the head ran
                            ft[m].append(f)
                    logits_all.append(lg.numpy())
                    feats_all.append(np.stack([np.stack(views_f, 1) for views_f in ft], 1))
                    for rec in batch["accepted"]:
                        ok[rec["index"]] = True
                bar.update(len(batch["accepted"]) + len(batch["rejected"]))
    finally:
        for tap in taps:
            tap.__exit__(None, None, None)
    logits = np.concatenate(logits_all) if logits_all else np.zeros((0, len(nets), 1, len(bundle.classes)), np.float32)
    feats = np.concatenate(feats_all) if feats_all else np.zeros((0, len(nets), 1, 0), np.float32)
    soft = torch.softmax(torch.from_numpy(logits).float(), dim=-1)[..., bundle.positive_index]
    probability = soft.reshape(soft.shape[0], -1).mean(dim=1).double().numpy()
    if rejected:
        log.warning("%d of %d image(s) could not be scored (e.g. %s)", len(rejected), len(inputs), rejected[0])
    return FeatureScores(
        paths=[str(p) for p in paths],
        ok=ok,
        probability=probability,
        logits=logits.astype(np.float32),
        features=feats.astype(np.float32),
        rejected=rejected,
    )
