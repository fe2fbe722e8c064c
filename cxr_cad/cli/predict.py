"""``cxr-cad predict``: score DICOM/PNG/JPEG folders or manifests with a model bundle."""

from __future__ import annotations

import argparse
import dataclasses

from cxr_cad import api
from cxr_cad.cli.options import (
    SOURCE_HELP,
    add_output_options,
    add_pacs_query,
    add_policy_options,
    non_negative_int,
    pacs_from,
    policy_from,
    positive_int,
    threshold_arg,
)
from cxr_cad.config.choices import PRECISIONS

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

--model may be the run folder of `cxr-cad train` (its model.pt is used, and logged).

Exit codes: 0 done; 2 bad arguments, missing sources or model, an --out that cannot be
created or written, or --out holding a different run; 1 a corrupt model bundle, a full disk
or another failure of the run."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="score DICOM/PNG/JPEG folders or manifests with a model bundle",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folder (recursive), manifest .csv, or image file")
    p.add_argument(
        "--model", required=True, metavar="BUNDLE", help="model bundle (.pt) from cxr-cad train, or its run folder"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created; resumed if it holds an interrupted run of the same command)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="decode processes (default: one per CPU core, at most 8; 0 = decode in the main process)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 autocast + channels-last on CPUs with native bf16 and on CUDA, else fp32",
    )
    p.add_argument(
        "--threshold",
        type=threshold_arg,
        default=None,
        help="decision threshold on the positive-class probability (default: the bundle's)",
    )
    add_policy_options(p, lateral_help="score lateral views too (default: reject them as LATERAL_VIEW)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out instead of resuming")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (only pays off on large runs)")
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "openvino", "torchscript"),
        default="auto",
        help="auto (default; --model is a bundle): the fastest backend whose probabilities equal torch "
        "fp32 within 1e-3 (torch fp32/bf16, onnxruntime, OpenVINO; CUDA AMP on a GPU), chosen once per "
        "machine and bundle and cached ($CXR_CAD_BACKEND_CACHE); --precision other than auto means torch. "
        "torch: the bundle in torch at --precision. onnxruntime|openvino|torchscript: a model written by "
        "`cxr-cad export` (--model is the export folder or its model file; needs the 'export' extra)",
    )
    p.add_argument(
        "--allow-int8",
        action="store_true",
        help="with --backend auto, the bundle's verified int8 variant (train --int8) may be chosen too",
    )
    p.epilog = f"SOURCE: {SOURCE_HELP}."  # DICOMweb / DICOM SR (docs/pacs.md)
    add_pacs_query(
        p,
        help="QIDO-RS filter for a dicomweb: source, repeatable, e.g. --query Modality=DX "
        "--query StudyDate=20240101-20240131 --query AccessionNumber=A123",
        fetch_chunk=True,
    )
    add_output_options(p)
    add_dimse_options(p)
    p.add_argument(  # FHIR results (docs/conformance.md#fhir)
        "--fhir-out",
        default=None,
        metavar="DIR",
        help="write a FHIR R4 DiagnosticReport (a transaction Bundle) per study into DIR (research use)",
    )
    p.add_argument(
        "--fhir-url",
        default=None,
        metavar="URL",
        help="with --fhir-out: POST each Bundle to this FHIR server base URL (token: CXR_CAD_FHIR_TOKEN)",
    )
    p.set_defaults(func=run)


def add_dimse_options(p: argparse.ArgumentParser) -> None:
    """A ``dimse://AET@HOST:PORT`` source (C-FIND + C-GET/C-MOVE) and the audit log (docs/pacs.md)."""
    p.add_argument(
        "--calling-aet",
        default="CXRCAD",
        metavar="AET",
        help="our AE title towards a dimse:// archive (default CXRCAD)",
    )
    p.add_argument(
        "--move-to",
        default=None,
        metavar="AET@[HOST:]PORT",
        help="dimse:// source: fetch with C-MOVE to a storage SCP of ours on PORT (the archive must know "
        "AET; default: C-GET)",
    )
    p.add_argument(
        "--audit", default=None, metavar="FILE", help="archive sources: audit log, JSON lines (default OUT/audit.jsonl)"
    )
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="dimse:// over DICOM TLS: the archive's CA")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="dimse:// over DICOM TLS: our client certificate")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="dimse:// over DICOM TLS: its private key")


def run(args: argparse.Namespace) -> int:
    options = api.PredictOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        threshold=args.threshold,
        policy=policy_from(args),
        overwrite=args.overwrite,
        compile=args.compile,
        backend=args.backend,
        allow_int8=args.allow_int8,
    )
    pacs = dataclasses.replace(
        pacs_from(args),
        calling_aet=args.calling_aet,
        move_to=args.move_to,
        audit=args.audit,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )  # dimse:// options (docs/pacs.md)
    for line in api.predict_sources(args.model, args.sources, args.out, options, pacs):
        print(f"cxr-cad predict: {line}")
    return 0
