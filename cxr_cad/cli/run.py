"""``cxr-cad run WORKFLOW.yaml|NAME``: run a workflow's steps in one run folder."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from cxr_cad.cli.options import check_out_dir
from cxr_cad.errors import UsageError
from cxr_cad.workflow.schema import load_workflow
from cxr_cad.workflow.shipped import find_workflow, shipped_workflows

DESCRIPTION = """\
Run the steps a workflow file names (ingest -> split -> crossval -> train -> evaluate ->
report) in one run folder. The whole file is checked before anything runs; every problem
(unknown keys, wrong types, missing paths, steps that cannot run) is listed at once.

Each step records its resolved config and the hashes of its inputs in RUN_DIR/<step>/step.json.
Running the same command again skips the steps whose config and inputs are unchanged and
resumes a step that was interrupted (training resumes after its last finished epoch).

WORKFLOW is a workflow file, or the name of a workflow shipped with cxr_cad:
{shipped}"""

EPILOG = """\
examples:
  cxr-cad run chandola2021_pneumonia --set data.train=/data/chest_xray/train \\
      --set data.test=/data/chest_xray/test --out runs/chandola
  cxr-cad run chandola2021_pneumonia --set data.train=DIR --set model.init=none \\
      --set train.epochs=3
  cxr-cad run workflows/batch_evaluate.yaml --set data.test=/pacs/export \\
      --set data.test_labels=labels.csv --set model.bundle=model.pt --out runs/site_a
  cxr-cad run WORKFLOW.yaml --check      # validate and show the plan, run nothing

--set KEY=VALUE takes a dotted key and a YAML value (train.epochs=3, data.classes=[NORMAL,PNEUMONIA],
data.test=null); an unknown key is named with the closest valid one. Exit codes: 0 done;
2 invalid workflow, options or --out; 1 a step failed (rerun the same command to resume)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a workflow file (ingest, cross-validation, training, evaluation, report) in one run folder",
        description=DESCRIPTION.format(shipped=_shipped_lines()),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "workflow", metavar="WORKFLOW", help="workflow .yaml file, or the name of a shipped workflow (listed above)"
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a workflow value (dotted key, YAML value); repeatable",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<workflow name>)")
    p.add_argument("--check", action="store_true", help="validate the workflow and print the plan; run nothing")
    p.set_defaults(func=run_command)


def _shipped_lines() -> str:
    """One line per shipped workflow: name, description, file."""
    import yaml

    lines = []
    for name, path in shipped_workflows().items():
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            about = " ".join(str(doc.get("description") or "").split())
        except (OSError, yaml.YAMLError):
            about = ""
        lines.append(f"  {name:<24} {about[:100]}{'...' if len(about) > 100 else ''}\n  {'':<24} ({path})")
    return "\n".join(lines) or "  (none found beside this installation)"


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def print_headline(title: str, h: dict, report_path: Path) -> None:
    """Print one report's headline numbers and where it is (stdout)."""
    print(f"{title}: {report_path}")
    level = f"{100 * (h.get('confidence_level') or 0.95):g}%"
    line = f"  AUC {_fmt(h.get('auc'))} ({level} CI {_fmt(h.get('auc_low'))}-{_fmt(h.get('auc_high'))}), n={h.get('n')}"
    if h.get("accuracy") is not None:
        where = (
            "each fold's own threshold"
            if h.get("operating_point") == "folds"
            else f"threshold {_fmt(h.get('threshold'))} ({h.get('operating_point')})"
        )
        line += (
            f"; at {where}: "
            f"accuracy {_fmt(h.get('accuracy'))}, sensitivity {_fmt(h.get('sensitivity'))}, "
            f"specificity {_fmt(h.get('specificity'))}"
        )
    print(line)
    fold = h.get("fold_auc") or {}
    if fold.get("mean") is not None:
        print(
            f"  per-fold AUC {_fmt(fold.get('mean'))} +/- {_fmt(fold.get('sd'))} (mean +/- SD, {fold.get('n_folds')} folds)"
        )
    cmp_ = h.get("comparison")
    if cmp_:
        print(
            f"  {cmp_.get('name_a')} AUC {_fmt(cmp_.get('auc_a'))} vs {cmp_.get('name_b')} AUC "
            f"{_fmt(cmp_.get('auc_b'))}: paired DeLong p = {_fmt(cmp_.get('p_value'))}"
        )


def print_result(result) -> None:
    for note in result.notes:
        print(f"note: {note}")
    for o in result.outcomes:
        print(f"  {o.name:<9} {o.status:<8} {o.seconds:7.1f} s")
    rep = result.report
    base = result.run_dir / "report"
    if rep.get("test"):
        print_headline("test-cohort report", rep["test"], base / rep["test_report"])
    if rep.get("crossval"):
        print_headline("cross-validation report", rep["crossval"], base / rep["crossval_report"])
    print(f"run folder: {result.run_dir}")


def run_command(args) -> int:
    path = find_workflow(args.workflow)
    wf = load_workflow(path, args.sets)
    out = Path(args.out) if args.out else Path("runs") / wf["name"]
    if not args.out:  # the default folder is checked here; a given --out was checked before
        problem = check_out_dir(str(out), "--out (default runs/<workflow name>)")
        if problem:
            raise UsageError(problem)
    if args.check:
        from cxr_cad.workflow.pipeline import planned_steps

        steps, notes = planned_steps(wf)
        for note in notes:
            print(f"note: {note}")
        print(f"{path}: valid; would run {', '.join(steps)} in {out.absolute()}")
        return 0
    from cxr_cad.workflow.pipeline import run_workflow  # the steps and their engines

    result = run_workflow(wf, out, on_step=lambda o: print(f"step {o.name}: {o.status}", file=sys.stderr))
    print_result(result)
    return 0
