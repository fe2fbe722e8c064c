"""``cxr-cad demo``: the whole pipeline on the bundled sample radiographs, offline, in minutes."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from cxr_cad.cli.run import print_result
from cxr_cad.errors import ConfigError

DESCRIPTION = """\
Run the whole pipeline on 100 real pediatric chest radiographs shipped with cxr_cad
(Kermany et al. 2018, CC BY 4.0; 50 NORMAL, 50 PNEUMONIA, downscaled): they are written
out as a DICOM folder (CR; 8- and 12-bit; MONOCHROME1 and MONOCHROME2; uncompressed,
RLE, JPEG baseline and JPEG 2000), ingested with labels joined by patient ID, 30% of the
patients are held out, a randomly initialised ResNet18 is trained briefly at 128 px, the
held-out patients are scored and the HTML/PDF report is written. No data and no
internet needed; a few minutes on a laptop CPU.

With 70 training images (about 20 of them validate) and no pre-training the numbers are a
demonstration of the pipeline, not a model to use; its decision threshold is illustrative."""

EPILOG = """\
outputs (in --out): dicom/ (the DICOM folder), labels.csv, run/ (the workflow run folder:
run/report/test/report.html, report.pdf, metrics.json, predictions.csv, figures).
Rerunning the same command skips the finished steps."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on bundled sample radiographs (offline)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default: runs/demo)")
    p.add_argument(
        "--fast",
        action="store_true",
        help="a seconds-long smoke run: 24 images, 64 px, 1 epoch (numbers meaningless; its training is "
        "--force'd, so a 1-epoch model at chance is kept and recorded as forced)",
    )
    p.add_argument("--epochs", type=int, metavar="N", help="training epochs (default: 12; --fast: 1)")
    p.add_argument("--image-size", type=int, metavar="PX", help="model input size (default: 128; --fast: 64)")
    p.add_argument("--no-pdf", action="store_true", help="write the HTML report only")
    p.set_defaults(func=run_command)


def run_command(args) -> int:
    # the workflow (pandas, the engine) is imported here, after argument checks: cli/__init__.py's rule
    from cxr_cad.workflow.demo import DemoSettings, run_demo, threshold_note

    settings = DemoSettings.fast() if args.fast else DemoSettings()
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, not {args.epochs}")
        settings = replace(settings, epochs=args.epochs)
    if args.image_size is not None:
        if not 32 <= args.image_size <= 256:
            raise ConfigError(
                f"--image-size must be in [32, 256] px (the sample images are 256 px), not {args.image_size}"
            )
        settings = replace(settings, image_size=args.image_size)
    if args.no_pdf:
        settings = replace(settings, pdf=False)
    result = run_demo(args.out, settings, on_step=lambda o: print(f"step {o.name}: {o.status}", file=sys.stderr))
    print_result(result)
    note = threshold_note(result.run_dir)
    if note:
        print(note)
    rep = result.report
    if rep.get("test_report"):
        print(f"open the report: {result.run_dir / 'report' / rep['test_report']}")
    return 0
