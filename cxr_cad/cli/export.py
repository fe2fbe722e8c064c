"""``cxr-cad export``: a model bundle as a MONAI bundle, ONNX, OpenVINO IR or TorchScript."""

from __future__ import annotations

import argparse

from cxr_cad.export.names import CALIBRATION_METHODS, FORMATS, MAX_AUC_DROP

DESCRIPTION = """\
Export a cxr_cad model bundle for other runtimes into the folder --out:
  monai-bundle  MONAI Bundle layout (configs/metadata.json, configs/inference.json running
                cxr_cad's eval chain through MONAI's ConfigParser, models/model.pt and model.ts)
  onnx          model.onnx (dynamic batch, opset 18) for onnxruntime / TensorRT / Triton
  openvino      model.xml + model.bin (OpenVINO IR)
  torchscript   model.ts (with the metadata, MONAI save_net_with_metadata)
Every folder holds export.json (classes, positive class, threshold, transform spec, SHA-256 of
the source bundle) and the bundle's model card. The export is checked against the torch model
(probabilities within 1e-4) before it is kept.

--int8 --calibration MANIFEST (onnx, openvino) adds a post-training static int8 model
(onnxruntime.quantization, QDQ), calibrated on part of the labelled manifest's patients and
checked on the rest: it is refused when its AUC drops by more than --max-auc-drop unless
--force. A calibration manifest that holds the bundle's own training or validation images (by
SOP Instance UID / SHA-256, against split.csv beside the bundle, or the whole training manifest by
its hash) is refused before anything is written, naming how many and which, unless --force (then
the overlap is recorded in export.json and printed). Score with `cxr-cad predict --backend
onnxruntime|openvino --model DIR`; for int8 as part of the model see `cxr-cad train --int8`.

--format monai-bundle needs the optional extra: pip install -c constraints/cpu.txt -e '.[export]'.
Exit codes: 0 done; 2 bad arguments, a missing model or calibration manifest, an --out that
cannot be created or written; 1 a corrupt bundle, a failed check or a refused int8 model."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model bundle (MONAI bundle, ONNX, OpenVINO, TorchScript)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, metavar="BUNDLE", help="model bundle (.pt) from cxr-cad train, or its run folder"
    )
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--int8", action="store_true", help="also write a post-training int8 model (onnx, openvino)")
    p.add_argument("--calibration", metavar="MANIFEST", help="labelled manifest for int8 calibration and its check")
    p.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default="minmax",
        help="how activation ranges are calibrated (default minmax)",
    )
    p.add_argument(
        "--max-auc-drop",
        type=float,
        default=MAX_AUC_DROP,
        help=f"largest AUC loss of the int8 model on held-out patients (default {MAX_AUC_DROP})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write the int8 model even if it loses more AUC, or calibrate on the bundle's own training images",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxr_cad.export import export_model  # torch (cli/__init__.py: lazy imports)

    result = export_model(
        args.model,
        args.fmt,
        args.out,
        int8=args.int8,
        calibration=args.calibration,
        calibration_method=args.calibration_method,
        force=args.force,
        overwrite=args.overwrite,
        max_auc_drop=args.max_auc_drop,
    )
    par = result.parity
    print(
        f"cxr-cad export: {args.fmt} -> {result.out} ({', '.join(result.files.values())}); parity with torch "
        f"fp32 on {par['n_images']} {par['inputs']} image(s): max probability difference "
        f"{par['max_abs_prob_diff']:.2g}"
    )
    if result.int8:
        from cxr_cad.export.quantize import Int8Report  # torch

        rep = Int8Report(**result.int8)
        print(f"cxr-cad export: {rep.line()}{' (forced)' if rep.forced else ''}")
    if result.rejected:
        print(
            f"cxr-cad export: {len(result.rejected)} calibration file(s) could not be read and were skipped: "
            + ", ".join(f"{p} ({r})" for p, r in result.rejected[:5])
        )
    return 0
