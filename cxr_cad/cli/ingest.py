"""``cxr-cad ingest``: folders of DICOM/PNG/JPEG -> manifest.csv + rejected.csv + ingest.json."""

from __future__ import annotations

import argparse
import logging
import os

from cxr_cad import api
from cxr_cad.cli.options import add_pacs_query, add_policy_options, pacs_from, policy_from
from cxr_cad.manifest import LABEL_KEYS
from cxr_cad.manifest.multilabel import LAYOUTS, UNCERTAIN_POLICIES
from cxr_cad.manifest.patients import PATIENT_PATTERNS

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
    _add_label_options(p)
    _add_scan_options(p)
    add_pacs_query(  # dicomweb: sources (docs/pacs.md)
        p,
        help="QIDO-RS filter for a dicomweb: source, repeatable (e.g. Modality=DX, StudyDate=20240101-20240131)",
        fetch_to=True,
    )
    p.set_defaults(func=run_ingest)


def _add_label_options(p: argparse.ArgumentParser) -> None:
    """Where the labels come from (a CSV, folder names, a multi-label layout) and which classes."""
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
    p.add_argument(
        "--label-layout",
        choices=LAYOUTS,
        help="read --labels as multi-label findings: nih (Data_Entry.csv: Image Index, Finding Labels "
        "joined by '|', Patient ID), columns (a key column + one 1/0 column per finding) or chexpert "
        "(CheXpert/MIMIC-CXR: 1, 0, -1 uncertain, blank = unknown); writes finding_<name> columns (docs/ingest.md)",
    )
    p.add_argument(
        "--findings",
        metavar="A,B",
        help="with --label-layout: the findings to keep, in this order (default: every finding found)",
    )
    p.add_argument(
        "--uncertain",
        choices=UNCERTAIN_POLICIES,
        default="ignore",
        help="with --label-layout chexpert: what -1 (uncertain) becomes: ignore (unknown, masked from the "
        "loss and the metrics; default), zeros or ones; recorded in ingest.json",
    )
    p.add_argument("--label-key", choices=LABEL_KEYS, help="key column of --labels (default: detected)")
    p.add_argument("--label-column", default="label", metavar="NAME", help="label column of --labels (default: label)")
    p.add_argument(
        "--classes", metavar="A,B", help="allowed label values, comma-separated; other values stop with exit code 2"
    )
    p.add_argument(
        "--positive-class", metavar="NAME", help="the positive class (recorded in ingest.json; never guessed)"
    )


def _add_scan_options(p: argparse.ArgumentParser) -> None:
    """How files are read: patient ids of PNG/JPEG names, the acceptance policy, workers, paths."""
    p.add_argument(
        "--patient-id-pattern",
        metavar="NAME|REGEX",
        help="how a PNG/JPEG file gets its patient id: a pattern name ("
        + "; ".join(f"{k}: {v.example}" for k, v in PATIENT_PATTERNS.items())
        + "; stem: one image per patient), or a REGEX whose first group is the id (searched in the "
        "path when it holds '/', else in the file name). Default: the named pattern that matches "
        "the most names; a warning when under 90%% match; a REGEX that matches no name stops with exit 2",
    )
    add_policy_options(
        p,
        lateral_help="accept lateral views ((0018,5101) LL/RL/LAT)",
        no_voi_help="record that VOI LUT / windowing is not to be applied",
    )
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


def _split_list(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def run_ingest(args: argparse.Namespace) -> int:
    """Handler of ``cxr-cad ingest``; returns the exit code."""
    policy = policy_from(args)
    args.sources = api.fetch_sources(args.sources, os.path.abspath(args.out), pacs_from(args))  # dicomweb: -> files
    outcome = api.run_ingest(
        args.sources,
        args.out,
        labels="folders" if args.labels_from_folders else args.labels,
        classes=_split_list(args.classes) or None,
        positive_class=args.positive_class,
        policy=policy,
        label_key=args.label_key,
        label_column=args.label_column,
        patient_id_pattern=args.patient_id_pattern,
        verify_pixels=args.verify_pixels,
        workers=args.workers,
        absolute_paths=args.absolute_paths,
        options={k: v for k, v in vars(args).items() if k != "func"},
        **(
            {
                "label_layout": args.label_layout,
                "findings": _split_list(args.findings) or None,
                "uncertain": args.uncertain,
            }
            if args.label_layout
            else {}
        ),
    )
    _print_summary(outcome, os.path.abspath(args.out))
    return 0


def _print_summary(outcome: api.IngestOutcome, out: str) -> None:
    """One screen on stdout: counts, reasons, labels, patient-id rule, outputs. No identifiers."""
    result, record, report = outcome.scan, outcome.record, outcome.label_report
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
    if rule.get("raster_images"):
        name = rule["pattern_name"] or f"pattern {rule['pattern']}"
        which = {"given": f"{name}, given", "detected": f"{name}, detected"}.get(rule["chosen"], "no pattern matched")
        pid.append(f"PNG/JPEG from file name ({which}) {rule['from_pattern']}, file stem {rule['from_file_stem']}")
    if rule.get("from_dicom") or rule.get("from_study_uid") or rule.get("from_sop_uid"):
        pid.append(
            f"DICOM (0010,0020) {rule['from_dicom']}, no Patient ID -> study UID {rule['from_study_uid']}, "
            f"-> SOP UID {rule['from_sop_uid']}"
        )
    if pid:
        lines.append("  patient ids: " + "; ".join(pid))
    if rule.get("warning"):
        lines.append(f"  WARNING: patient ids: {rule['warning']}")
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
        by = c.get("positives_by_finding") or c["labels_by_class"]  # multi-label: positive images per finding
        for k, v in by.items():
            lines.append(f"    {k:<26}{v:>7}")
    cls = record["classes"]
    lines.append(
        f"  classes: {','.join(cls) if cls else '-'}; positive class: "
        f"{record['positive_class'] or 'not set (give --positive-class)'}"
    )
    written = (
        ["manifest.csv", "rejected.csv"] + (["unmatched_labels.csv"] if report is not None else []) + ["ingest.json"]
    )
    lines.append(f"  wrote {', '.join(written)} to {out}")
    print("\n".join(lines))
