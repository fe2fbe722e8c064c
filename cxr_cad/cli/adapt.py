"""``cxr-cad adapt``: adapt a trained bundle to a site from a few labelled site images."""

from __future__ import annotations

import argparse

from cxr_cad import api
from cxr_cad.cli.options import non_negative_int, positive_int
from cxr_cad.config.choices import PRECISIONS

DESCRIPTION = """\
Adapt a model bundle to a new site from labelled site images (docs/adaptation.md), cheapest
first: --method threshold (re-choose the threshold by the bundle's policy on the site images),
recalibrate (Platt or temperature scaling fitted on them, then --cutoff on the calibrated
probability; predict applies the calibration), head (refit the final linear layer by
patient-grouped cross-validated logistic regression on the network's features, backbone kept)
or finetune (a few epochs of training from the bundle on the site images).

--n-site N draws N site images from --manifest (patient-grouped, stratified, --seed); the
manifest's other patients are then the evaluation images, unless --eval-manifest is given.
Site images, and every image of a site patient, are never evaluated on.

Writes OUT/model.pt (the child bundle: parent sha256, method and the number of site images in
its metadata), OUT/site_rows.csv (the site images used), OUT/model_card.md, OUT/adapt.json and,
with evaluation images, OUT/comparison.json, OUT/comparison.md (parent vs child on the same
images: AUC with DeLong CIs, paired DeLong test, sensitivity/specificity at each threshold) and
OUT/eval_predictions.csv.

Exit codes: 0 done; 1 bad bundle or another failure; 2 bad arguments or manifests."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "adapt",
        help="adapt a model bundle to a site from a few labelled images (threshold, recalibrate, head, finetune)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="BUNDLE", help="the parent model bundle (.pt)")
    p.add_argument("--manifest", required=True, metavar="SITE.csv", help="labelled manifest of site images")
    p.add_argument(
        "--method", required=True, choices=("threshold", "recalibrate", "head", "finetune"), help="the ladder step"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the child bundle and its files")
    p.add_argument("--n-site", type=positive_int, metavar="N", help="draw N site images (default: every row)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the site draw and the head's folds [0]")
    p.add_argument("--eval-manifest", metavar="EVAL.csv", help="labelled evaluation images (site patients removed)")
    p.add_argument(
        "--calibration",
        choices=("platt", "temperature"),
        help="recalibrate: the calibration [the bundle's, else platt]",
    )
    p.add_argument("--cutoff", type=float, help="recalibrate: cut-off on the calibrated probability [0.5]")
    p.add_argument("--epochs", type=positive_int, default=3, help="finetune: epochs [3]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="scoring precision [auto]")
    p.add_argument("--batch-size", type=positive_int, default=32, help="scoring batch size [32]")
    p.add_argument("--workers", type=non_negative_int, default=0, help="decode processes [0]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = api.adapt(
        args.model,
        args.manifest,
        args.out,
        method=args.method,
        n_site=args.n_site,
        seed=args.seed,
        eval_manifest=args.eval_manifest,
        calibration=args.calibration,
        cutoff=args.cutoff,
        finetune={"epochs": args.epochs, "runtime.device": args.device, "runtime.workers": args.workers},
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    print(result.summary_line())
    return 0
