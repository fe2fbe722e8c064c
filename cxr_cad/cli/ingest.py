"""``cxr-cad ingest``: folders of DICOM/PNG/JPEG -> manifest.csv + rejected.csv + ingest.json."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import tempfile

import pandas as pd

from cxr_cad.errors import ManifestError, UsageError
from cxr_cad.io.policy import AcceptPolicy
from cxr_cad.io.scan import compile_patient_id_pattern, scan_sources
from cxr_cad.manifest import (
    LABEL_KEYS,
    atomic_write_many,
    explain_unmatched,
    join_labels,
    labels_from_folders,
    manifest_hash,
    manifest_text,
    read_labels,
    table_text,
    validate_manifest,
)
from cxr_cad.versions import software_versions

log = logging.getLogger(__name__)

DESCRIPTION = """\
Walk folders (recursively) and files, read each file's header (DICOM, PNG, JPEG) in parallel,
and write to --out: manifest.csv (one row per accepted image), rejected.csv (one row per file
not accepted: path, reason code, detail), ingest.json (classes, positive class, sources,
counts, policy, software version) and, with --labels, unmatched_labels.csv.
Every input file appears in exactly one of manifest.csv and rejected.csv.
Patient names are never read or written."""

EPILOG = """\
examples:
  cxr-cad ingest /data/pacs_export --out data_manifests/site_a --labels labels.csv
  cxr-cad ingest chest_xray/train --out data_manifests/kermany_train --labels-from-folders \\
      --classes NORMAL,PNEUMONIA --positive-class PNEUMONIA"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="scan DICOM/PNG/JPEG folders into a manifest",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="folders (scanned recursively) and/or files, or "
        "dicomweb:http(s)://HOST/PREFIX with --query and --fetch-to",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    lab = p.add_mutually_exclusive_group()
    lab.add_argument(
        "--labels",
        metavar="CSV",
        help="labels CSV with a 'label' column and one key column: "
        + ", ".join(LABEL_KEYS)
        + " (detected in that order)",
    )
    lab.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="label = name of the folder containing the file (Kermany layout NORMAL/, PNEUMONIA/), "
        "or of the nearest ancestor folder named in --classes",
    )
    p.add_argument("--label-key", choices=LABEL_KEYS, help="key column of --labels (default: detected)")
    p.add_argument("--label-column", default="label", metavar="NAME", help="label column of --labels (default: label)")
    p.add_argument(
        "--classes", metavar="A,B", help="allowed label values, comma-separated; other values stop with exit code 2"
    )
    p.add_argument(
        "--positive-class", metavar="NAME", help="the positive class (recorded in ingest.json; never guessed)"
    )
    p.add_argument(
        "--patient-id-pattern",
        metavar="REGEX",
        help="regex whose first group is the patient id in a PNG/JPEG file name (default handles "
        "Kermany names: IM-0115-0001.jpeg -> IM-0115, person12_virus_3.jpeg -> person12); "
        "no match -> file stem",
    )
    p.add_argument(
        "--modalities",
        default="CR,DX,DR",
        metavar="LIST",
        help="accepted (0008,0060) Modality values, comma-separated, or 'any' (default: CR,DX,DR)",
    )
    p.add_argument("--allow-lateral", action="store_true", help="accept lateral views ((0018,5101) LL/RL/LAT)")
    p.add_argument("--no-voi", action="store_true", help="record that VOI LUT / windowing is not to be applied")
    p.add_argument(
        "--verify-pixels",
        action="store_true",
        help="decode every accepted file now (finds DECODE_FAILED / CONSTANT_IMAGE at ingest time; "
        "several times slower than header-only)",
    )
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default: CPUs, at most 8; 1 = no pool)")
    p.add_argument(
        "--absolute-paths",
        action="store_true",
        help="write absolute paths (default: relative to the manifest's folder)",
    )
    from cxr_cad.pacs.cliopts import add_fetch_options  # dicomweb: sources (docs/pacs.md)

    add_fetch_options(p)
    p.set_defaults(func=run_ingest)


def _split_list(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _check_args(args) -> tuple[list[str] | None, AcceptPolicy]:
    problems = []
    missing = [s for s in args.sources if not os.path.exists(s)]
    if missing:
        problems.append("input not found: " + ", ".join(missing))
    classes = _split_list(args.classes) or None
    if classes and len(set(classes)) != len(classes):
        problems.append(f"--classes lists a class twice: {args.classes}")
    if args.positive_class and classes and args.positive_class not in classes:
        problems.append(f"--positive-class {args.positive_class!r} is not one of --classes {','.join(classes)}")
    if args.workers is not None and args.workers < 1:
        problems.append(f"--workers must be 1 or more (got {args.workers})")
    if (args.label_key or args.label_column != "label") and not args.labels:
        problems.append("--label-key/--label-column need --labels")
    mods = _split_list(args.modalities)
    modalities = () if [m.lower() for m in mods] == ["any"] else tuple(m.upper() for m in mods)
    if not mods:
        problems.append("--modalities is empty; give e.g. CR,DX,DR or 'any'")
    try:
        compile_patient_id_pattern(args.patient_id_pattern)
    except UsageError as exc:
        problems.append(str(exc))
    problems += _check_out_dir(args.out)
    if problems:
        raise UsageError("; ".join(problems))
    policy = AcceptPolicy(modalities=modalities, reject_lateral=not args.allow_lateral, apply_voi=not args.no_voi)
    return classes, policy


def _check_out_dir(out: str) -> list[str]:
    """The output folder must be creatable and writable (checked with a probe file)."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        return [f"output folder {out} is not writable ({exc.strerror or exc}); choose another --out"]
    return []


def _folder_label_problem(df: pd.DataFrame, classes: list[str]) -> str | None:
    unknown = df[~df["label"].isin(classes)]
    if unknown.empty:
        return None
    names = unknown["label"].replace("", "(no folder)")
    named = ", ".join(
        f"{k!r} ({v} files, e.g. {unknown['path'][names == k].iloc[0]})" for k, v in names.value_counts().items()
    )
    return (
        f"folder label(s) not in --classes {','.join(classes)}: {named}; put each image under a folder named "
        "after its class, or fix --classes"
    )


def run_ingest(args) -> int:
    """Handler of ``cxr-cad ingest``; returns the exit code."""
    started = _dt.datetime.now(_dt.timezone.utc)
    from cxr_cad.pacs.cliopts import materialise_sources  # dicomweb: -> the folder it is fetched into

    args.sources = materialise_sources(args, os.path.abspath(args.out))
    classes, policy = _check_args(args)
    out = os.path.abspath(args.out)
    if args.labels:  # check the labels file before the (long) scan; join_labels reads it again
        read_labels(args.labels, key=args.label_key, label_column=args.label_column, classes=classes)
    result = scan_sources(
        args.sources,
        policy=policy,
        workers=args.workers,
        patient_id_pattern=args.patient_id_pattern,
        verify_pixels=args.verify_pixels,
        exclude=[out],
    )
    manifest = result.accepted
    report = None
    label_source = None
    if args.labels_from_folders:
        label_source = "folders"
        manifest = labels_from_folders(manifest, classes=classes)
        if classes:
            problem = _folder_label_problem(manifest, classes)
            if problem:
                raise UsageError(problem)
    elif args.labels:
        label_source = os.path.abspath(args.labels)
        manifest, report = join_labels(
            manifest,
            label_source,
            key=args.label_key,
            label_column=args.label_column,
            classes=classes,
            base_dir=os.path.dirname(label_source),
        )
        explain_unmatched(report, result.rejected, os.path.dirname(label_source))
    found = sorted(set(manifest["label"]) - {""})
    if classes is None and found:
        classes = found
    if args.positive_class and classes is not None and args.positive_class not in classes:
        raise UsageError(
            f"--positive-class {args.positive_class!r} is not among the labels found "
            f"({', '.join(found) or 'none'}); set --classes or fix the name"
        )
    problems = validate_manifest(manifest, classes=classes) if len(manifest) else []
    if problems:
        raise ManifestError(problems, source="scanned images")
    # the outputs are one unit: all written to temporary files, then all renamed (a full disk
    # leaves the folder as it was, never a manifest.csv without its rejected.csv / ingest.json)
    outputs = {
        os.path.join(out, "manifest.csv"): manifest_text(
            manifest, os.path.join(out, "manifest.csv"), relative=not args.absolute_paths
        ),
        os.path.join(out, "rejected.csv"): table_text(result.rejected),
    }
    if report is not None:
        outputs[os.path.join(out, "unmatched_labels.csv")] = table_text(report.unmatched)
    labels_by_class = {str(k) or "(none)": int(v) for k, v in manifest["label"].value_counts().items()}
    record = {
        "software": software_versions(("pydicom", "pandas")),
        "created": started.isoformat(timespec="seconds"),
        "seconds": round(result.seconds, 2),
        "options": {k: v for k, v in sorted(vars(args).items()) if k != "func"},
        "sources": [os.path.abspath(s) for s in args.sources],
        "outputs": {
            "manifest": "manifest.csv",
            "rejected": "rejected.csv",
            "unmatched_labels": "unmatched_labels.csv" if report is not None else None,
        },
        "paths": "absolute" if args.absolute_paths else "relative to this folder where they share a parent",
        "policy": {
            "modalities": list(policy.modalities) or "any",
            "reject_lateral": policy.reject_lateral,
            "apply_voi": policy.apply_voi,
            "verify_pixels": bool(args.verify_pixels),
        },
        "classes": classes,
        "positive_class": args.positive_class,
        "labels": {"source": label_source, **(report.to_dict() if report is not None else {})},
        "patient_id_rule": result.patient_id_rule,
        "counts": {
            "files": result.n_files,
            "accepted": len(manifest),
            "rejected": len(result.rejected),
            "rejected_by_reason": result.rejected_by_reason(),
            "labels_by_class": labels_by_class,
            "patients": int(manifest["patient_id"].nunique()),
            "studies": int(manifest.loc[manifest["study_instance_uid"] != "", "study_instance_uid"].nunique()),
        },
        "skipped_folders": len(result.skipped_dirs),
        "workers": result.workers,
        "manifest_hash": manifest_hash(manifest),
    }
    outputs[os.path.join(out, "ingest.json")] = json.dumps(record, indent=2) + "\n"
    atomic_write_many(outputs)
    _print_summary(result, manifest, record, report, out)
    return 0


def _print_summary(result, manifest: pd.DataFrame, record: dict, report, out: str) -> None:
    """One screen on stdout: counts, reasons, labels, patient-id rule, outputs. No identifiers."""
    c = record["counts"]
    lines = [
        f"ingest: {c['files']} files in {result.seconds:.1f} s ({result.workers} worker(s))",
        f"  accepted  {c['accepted']:>7}   ({c['patients']} patients)",
        f"  rejected  {c['rejected']:>7}",
    ]
    lines += [f"    {reason:<26}{n:>7}" for reason, n in c["rejected_by_reason"].items()]
    if result.skipped_dirs:
        lines.append(f"  folders not entered twice (symlink loops): {len(result.skipped_dirs)}")
    rule = result.patient_id_rule
    pid = []
    if rule["from_pattern"] or rule["from_file_stem"]:
        which = "default Kermany pattern" if rule["default_pattern"] else f"pattern {rule['pattern']}"
        pid.append(f"PNG/JPEG from file name ({which}) {rule['from_pattern']}, file stem {rule['from_file_stem']}")
    if rule["from_dicom"] or rule["from_study_uid"] or rule["from_sop_uid"]:
        pid.append(
            f"DICOM (0010,0020) {rule['from_dicom']}, no Patient ID -> study UID {rule['from_study_uid']}, "
            f"-> SOP UID {rule['from_sop_uid']}"
        )
    if pid:
        lines.append("  patient ids: " + "; ".join(pid))
    lab = record["labels"]
    if lab["source"] is None:
        lines.append("  labels: none (no --labels / --labels-from-folders)")
    else:
        where = "folder names" if lab["source"] == "folders" else lab["source"]
        lines.append(f"  labels from {where}")
        if report is not None:
            how = "detected" if report.key_detected else "given"
            lines.append(
                f"    key {report.key} ({how}): {report.matched_label_rows} of {report.label_rows} label "
                f"rows matched, {len(report.unmatched)} unmatched"
            )
            if len(report.unmatched):
                shown = ", ".join(str(x) for x in report.unmatched["line"].head(8))
                more = " ..." if len(report.unmatched) > 8 else ""
                lines.append(f"    unmatched CSV lines: {shown}{more} (see unmatched_labels.csv)")
        for k, v in c["labels_by_class"].items():
            lines.append(f"    {k:<26}{v:>7}")
    cls = record["classes"]
    lines.append(
        f"  classes: {','.join(cls) if cls else '-'}; positive class: "
        f"{record['positive_class'] or 'not set (give --positive-class)'}"
    )
    if not c["accepted"]:
        lines.append("  WARNING: no image was accepted; see rejected.csv for the reasons")
    written = (
        ["manifest.csv", "rejected.csv"] + (["unmatched_labels.csv"] if report is not None else []) + ["ingest.json"]
    )
    lines.append(f"  wrote {', '.join(written)} to {out}")
    print("\n".join(lines))
