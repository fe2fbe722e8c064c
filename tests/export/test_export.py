"""``cxr-cad export`` round trips on real radiographs: ONNX, OpenVINO, TorchScript, MONAI bundle.

The reference is ``cxr-cad predict --precision fp32`` with the torch model: every backend must
give the same probabilities within 1e-4, the same rejected files and the same CSV columns.
Images: the Kermany JPEG sample shipped with the package and the two real SIIM DICOMs of
tests/data (one MONOCHROME1), plus one file that is not an image (must be rejected).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from cxr_cad.cli import main  # noqa: E402

SAMPLE = Path(__file__).parents[2] / "cxr_cad" / "data" / "kermany_sample"
DICOMS = sorted((Path(__file__).parents[1] / "data").glob("*.dcm"))
SIZE = 128
TOL = 1e-4


def kermany_manifest(path: Path, n: int | None = None) -> Path:
    """A labelled manifest (path, sop_instance_uid, patient_id, label) of the shipped sample."""
    labels = pd.read_csv(SAMPLE / "labels.csv")
    if n is not None:
        labels = labels.groupby("label", group_keys=False).head(n // 2)
    rows = []
    for r in labels.itertuples():
        f = SAMPLE / r.file
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        rows.append(
            {
                "path": str(f),
                "sop_instance_uid": f"sha256:{digest}",
                "sha256": digest,
                "patient_id": r.patient_key,
                "label": r.label,
            }
        )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A bundle, a folder of real radiographs (+ one non-image) and the torch fp32 predictions."""
    from cxr_cad.model import build_resnet18, save_bundle
    from cxr_cad.modelcard import write_card_for_bundle
    from cxr_cad.transforms import TransformSpec

    root = tmp_path_factory.mktemp("export")
    images = root / "images"
    images.mkdir()
    for f in sorted((SAMPLE / "images").glob("*.jpg"))[:10] + DICOMS:
        shutil.copy(f, images / f.name)
    (images / "notes.txt").write_text("not an image")
    torch.manual_seed(0)
    bundle = save_bundle(
        root / "model.pt",
        build_resnet18(2, 1),
        classes=["NORMAL", "PNEUMONIA"],
        positive_class="PNEUMONIA",
        transform_spec=TransformSpec(image_size=SIZE),
        threshold=0.42,
        threshold_method="fixed",
        manifest_hash="0" * 64,
    )
    write_card_for_bundle(bundle)  # as every run does beside the bundles it saves
    ref = root / "ref"
    assert (
        main(
            [
                "-q",
                "predict",
                str(images),
                "--model",
                str(bundle),
                "--out",
                str(ref),
                "--precision",
                "fp32",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    return root, images, bundle, ref


def _compare(ref: Path, other: Path) -> float:
    a = pd.read_csv(ref / "predictions.csv").set_index("path")
    b = pd.read_csv(other / "predictions.csv").set_index("path")
    assert list(a.columns) == list(b.columns)
    assert list(a.index) == list(b.index) and len(a) == 12
    assert (a["decision"] == b["decision"]).all()
    ra, rb = pd.read_csv(ref / "rejected.csv"), pd.read_csv(other / "rejected.csv")
    assert ra[["path", "reason"]].equals(rb[["path", "reason"]]) and len(ra) == 1
    return float(np.abs(a["probability"] - b["probability"]).max())


def _export(setup, fmt, *extra) -> Path:
    root, _, bundle, _ = setup
    out = root / fmt
    assert main(["-q", "export", "--model", str(bundle), "--format", fmt, "--out", str(out), *extra]) == 0
    return out


@pytest.mark.parametrize(
    "fmt,backend",
    [("onnx", "onnxruntime"), ("openvino", "openvino"), ("torchscript", "torchscript"), ("onnx", "openvino")],
)
def test_export_and_predict_with_backend_matches_torch(setup, fmt, backend, tmp_path):
    from cxr_cad.core.provenance import sha256_file as file_sha256
    from cxr_cad.export import read_export_record

    root, images, bundle, ref = setup
    out = root / fmt if (root / fmt).is_dir() else _export(setup, fmt)
    rec = read_export_record(out)
    assert rec["classes"] == ["NORMAL", "PNEUMONIA"] and rec["positive_class"] == "PNEUMONIA"
    assert rec["threshold"] == pytest.approx(0.42)
    assert rec["transform_spec"]["image_size"] == SIZE
    assert rec["source_bundle"]["sha256"] == file_sha256(bundle)
    assert rec["parity"]["max_abs_prob_diff"] <= TOL
    for f in rec["files"].values():
        assert file_sha256(out / f["path"]) == f["sha256"]
    assert (out / "model_card.md").read_text() == (root / "model_card.md").read_text()
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "-q",
                "predict",
                str(images),
                "--model",
                str(out),
                "--out",
                str(pred),
                "--backend",
                backend,
                "--workers",
                "0",
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    assert _compare(ref, pred) <= TOL
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["runtime"]["backend"] == backend
    # resume: a rerun finds everything done and changes nothing
    before = (pred / "predictions.csv").read_text()
    assert (
        main(
            [
                "-q",
                "predict",
                str(images),
                "--model",
                str(out),
                "--out",
                str(pred),
                "--backend",
                backend,
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert (pred / "predictions.csv").read_text() == before


def test_onnx_has_a_dynamic_batch(setup):
    import onnx

    out = setup[0] / "onnx" if (setup[0] / "onnx").is_dir() else _export(setup, "onnx")
    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].dim_value and dims[0].dim_param  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]


def test_openvino_threads_are_not_pinned_and_follow_the_torch_thread_count(setup):
    """predict's decode workers share the cores: OpenVINO's threads must be free to migrate."""
    from cxr_cad.export.backends import OpenVinoModel

    out = setup[0] / "onnx" if (setup[0] / "onnx").is_dir() else _export(setup, "onnx")
    model = OpenVinoModel(out / "model.onnx", threads=2)
    assert model.compiled.get_property("ENABLE_CPU_PINNING") is False
    assert int(model.compiled.get_property("INFERENCE_NUM_THREADS")) == 2


def test_monai_bundle_verifies_and_runs_like_predict(setup, tmp_path):
    root, images, bundle, ref = setup
    out = _export(setup, "monai-bundle")
    for f in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (out / f).is_file(), f
    infer = json.loads((out / "configs" / "inference.json").read_text())
    assert infer["preprocessing"]["_target_"] == "cxr_cad.transforms.build_eval_transforms"
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "NORMAL", "1": "PNEUMONIA"}
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            "configs/metadata.json",
            "--filepath",
            "docs/metadata_schema.json",
        ],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and "metadata is verified with no error" in verify.stdout + verify.stderr
    readable = tmp_path / "readable"  # MONAI's Dataset has no rejection bookkeeping: real images only
    shutil.copytree(images, readable, ignore=shutil.ignore_patterns("*.txt"))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--dataset_dir",
            str(readable),
            "--output_dir",
            str(tmp_path / "eval"),
        ],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = pd.read_csv(tmp_path / "eval" / "predictions.csv", header=None, names=["path", "p0", "p1"])
    got["name"] = got["path"].map(lambda p: Path(p).name)
    want = pd.read_csv(ref / "predictions.csv")
    want["name"] = want["path"].map(lambda p: Path(p).name)
    merged = want.merge(got, on="name")
    assert len(merged) == 12
    assert np.abs(merged["probability"] - merged["p1"]).max() <= TOL
    assert np.allclose(merged["p0"] + merged["p1"], 1, atol=1e-6)


def test_int8_reports_and_refuses(setup, tmp_path):
    from cxr_cad.export import Int8Refused, export_model, load_exported

    root, images, bundle, _ = setup
    manifest = kermany_manifest(tmp_path / "calib.csv")
    with pytest.raises(Int8Refused, match="AUC drop exceeds"):  # an impossible limit: refused, nothing written
        export_model(bundle, "onnx", tmp_path / "refused", int8=True, calibration=manifest, max_auc_drop=-1.0)
    assert not (tmp_path / "refused" / "model.int8.onnx").exists()
    res = export_model(
        bundle, "onnx", tmp_path / "forced", int8=True, calibration=manifest, max_auc_drop=-1.0, force=True
    )
    rep = res.int8
    assert rep["forced"] and not rep["accepted"]
    assert rep["n_calibration"] + rep["n_heldout"] == 100
    assert 0 <= rep["prob_change_p99"] <= rep["prob_change_max"] < 0.05
    assert rep["auc_change"] == pytest.approx(rep["auc_int8"] - rep["auc_fp32"])
    assert res.parity["inputs"] == "calibration-manifest" and res.parity["max_abs_prob_diff"] <= TOL
    m = load_exported(tmp_path / "forced", "onnxruntime")
    assert m.path.endswith("model.int8.onnx")  # the folder's int8 model is the one used
    ov = load_exported(tmp_path / "forced" / "model.int8.onnx", "openvino")  # OpenVINO reads the QDQ graph
    x = torch.randn(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    p_ort = torch.softmax(m.model(x), 1)[:, 1]
    p_ov = torch.softmax(ov.model(x), 1)[:, 1]
    assert float((p_ort - p_ov).abs().max()) < 0.02
    rec = json.loads((tmp_path / "forced" / "export.json").read_text())
    assert rec["int8"]["forced"] and rec["files"]["model_int8"]["path"] == "model.int8.onnx"
    # issue 23 defect 11: the summary line names the int8 model, not "cpu fp32"
    args = ["predict", str(images), "--model", str(tmp_path / "forced"), "--backend", "onnxruntime"]
    assert main(["-q", *args, "--out", str(tmp_path / "scored"), "--workers", "0"]) == 0
    summary = json.loads((tmp_path / "scored" / "summary.json").read_text())
    assert (summary["runtime"]["backend"], summary["runtime"]["precision"]) == ("onnxruntime", "int8")


def test_usage_errors(setup, tmp_path, capsys):
    _, images, bundle, _ = setup
    assert (
        main(
            [
                "export",
                "--model",
                str(bundle),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "t"),
                "--int8",
                "--calibration",
                "x.csv",
            ]
        )
        == 2
    )
    assert main(["export", "--model", str(bundle), "--format", "onnx", "--out", str(tmp_path / "o"), "--int8"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert (
        main(
            [
                "-q",
                "predict",
                str(images),
                "--model",
                str(bundle),
                "--out",
                str(tmp_path / "p"),
                "--backend",
                "onnxruntime",
            ]
        )
        == 2
    )  # a bundle is not an export folder: what the user gave is wrong (docs/cli.md#exit-codes)
    assert "export.json" in capsys.readouterr().err


def test_missing_extra_names_the_install_command(monkeypatch):
    import builtins

    from cxr_cad.errors import MissingExtraError
    from cxr_cad.export.common import require

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith(("onnxruntime", "jsonschema")):
            raise ImportError(f"no {name}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.delitem(sys.modules, "jsonschema", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install .*\[export\]"):
        require("jsonschema", "export")
    # a core runtime (predict --backend auto needs it): the fix is a reinstall, not an extra
    with pytest.raises(MissingExtraError, match=r"reinstall cxr_cad") as info:
        require("onnxruntime", "export")
    assert "[export]" not in str(info.value)


def test_bad_format_backend_and_method_are_config_errors(tmp_path):
    """A bad value of a setting is a ConfigError (exit 2), whatever the entry point."""
    from cxr_cad.errors import ConfigError
    from cxr_cad.export import export_model, load_exported
    from cxr_cad.export.quantize import quantize_onnx

    with pytest.raises(ConfigError, match="--format must be one of"):
        export_model(tmp_path / "model.pt", "tflite", tmp_path / "out")
    with pytest.raises(ConfigError, match="backend must be one of"):
        load_exported(tmp_path, "tensorrt")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match="calibration method"):
        quantize_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx", torch.zeros(1, 1, 8, 8), method="median")


def test_int8_calibration_on_the_bundles_own_images_is_refused_unless_forced(setup, tmp_path, capsys):
    """Issue 23 defect 8: a calibration manifest that holds the bundle's training or validation images
    (by SOP Instance UID / SHA-256, against the run's split.csv) would make the "held-out" check a
    check on training images: refused, naming how many and which, unless --force (then recorded)."""
    from cxr_cad.export.quantize import calibration_overlap
    from cxr_cad.manifest import manifest_hash

    _, _, bundle, _ = setup
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(bundle, run / "model.pt")
    manifest = kermany_manifest(tmp_path / "calib.csv")
    calib = pd.read_csv(manifest)
    split = calib.iloc[:40][["sop_instance_uid", "patient_id", "label"]].assign(split=["train"] * 30 + ["val"] * 10)
    split.to_csv(run / "split.csv", index=False)
    args = ["export", "--model", str(run / "model.pt"), "--format", "onnx", "--int8", "--calibration", str(manifest)]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "40 of the 100 calibration image(s)" in err and "training (30)" in err and "validation (10)" in err
    assert Path(calib["path"][0]).name in err and "--force" in err
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())

    assert main([*args, "--out", str(tmp_path / "forced"), "--force"]) == 0
    assert "NOT held out: 40 calibration image(s)" in capsys.readouterr().out
    rec = json.loads((tmp_path / "forced" / "export.json").read_text())
    assert rec["calibration_overlap"]["n_overlap"] == 40 and rec["int8"]["calibration_overlap"] == 40

    # no split.csv: a calibration manifest equal to the training manifest (same hash) is recognised
    whole = calibration_overlap(bundle, manifest_hash(calib), calib)
    assert whole["n_overlap"] == 100 and "hash" in whole["checked_against"]
    other = calibration_overlap(bundle, "0" * 64, calib)
    assert other["n_overlap"] == 0 and other["checked_against"].startswith("nothing")
