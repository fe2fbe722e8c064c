"""``cxr-cad predict``: score DICOM/PNG/JPEG folders or manifests with a model bundle."""

from __future__ import annotations

import argparse

from cxr_cad.cli.report import threshold_arg  # the --threshold type shared with report/evaluate

DESCRIPTION = """\
Score every image file under SOURCE (folders, recursively; manifest .csv files; single
files) with a model bundle. Writes OUT/predictions.csv (one row per scored image: path,
sop_instance_uid, study_instance_uid, probability of the positive class, decision at the
threshold, threshold, model_sha256, shift_score and shift_flag, and label when a manifest
has one), OUT/rejected.csv (path, reason code, detail) and OUT/summary.json; every input
file is in exactly one CSV. OUT/shift.json says whether the cohort is unlike the model's
training images (a WARNING line when it is; docs/shift.md).

Rerunning the same command with the same --out resumes an interrupted run. Under
`torchrun --nproc_per_node N -m cxr_cad predict ...` each process scores a shard and
rank 0 writes the merged CSVs.

Exit codes: 0 done; 1 bad model bundle, unwritable --out or another failure;
2 bad arguments, missing sources, or --out holding a different run."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="score DICOM/PNG/JPEG folders or manifests with a model bundle",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folder (recursive), manifest .csv, or image file")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="model bundle (.pt) from cxr-cad train")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created; resumed if it holds an interrupted run of the same command)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="decode processes (default: one per CPU core, at most 8; 0 = decode in the main process)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast + channels-last on CPUs with native bf16 and on CUDA, else fp32",
    )
    p.add_argument(
        "--threshold",
        type=threshold_arg,
        default=None,
        help="decision threshold on the positive-class probability (default: the bundle's)",
    )
    p.add_argument(
        "--modalities",
        default="CR,DX,DR",
        metavar="LIST",
        help="accepted (0008,0060) Modality values, comma separated, or 'any' (default CR,DX,DR)",
    )
    p.add_argument(
        "--allow-lateral", action="store_true", help="score lateral views too (default: reject them as LATERAL_VIEW)"
    )
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out instead of resuming")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (only pays off on large runs)")
    p.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "openvino", "torchscript"),
        default="torch",
        help="torch (default; --model is a bundle) or a runtime for a model written by `cxr-cad export` "
        "(--model is the export folder or its model file; needs the 'export' extra)",
    )
    from cxr_cad.api._pacs import (  # DICOMweb / DICOM SR (docs/pacs.md)
        SOURCE_HELP,
        add_output_options,
        add_query_option,
    )

    p.epilog = f"SOURCE: {SOURCE_HELP}."
    add_query_option(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxr_cad import api
    from cxr_cad.inference.predict import PredictOptions
    from cxr_cad.io.policy import AcceptPolicy

    policy = AcceptPolicy.from_options(modalities=args.modalities, allow_lateral=args.allow_lateral)
    options = PredictOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        threshold=args.threshold,
        policy=policy,
        overwrite=args.overwrite,
        compile=args.compile,
        backend=args.backend,
    )
    from cxr_cad.api._pacs import pacs_requested, run_predict

    if pacs_requested(args, args.sources) or args.query:  # dicomweb: source, --dicom-out (docs/pacs.md)
        for line in run_predict(args, args.sources, args.out, args.model, options):
            print(f"cxr-cad predict: {line}")
        return 0
    result = api.score(args.model, args.sources, args.out, options)
    if result.runtime.get("rank", 0) == 0:
        print(f"cxr-cad predict: {result.summary_line()}")
    return 0
