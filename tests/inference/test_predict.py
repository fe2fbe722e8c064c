"""``cxr-cad predict``: every file accounted for, scores stable across precision and format.

The helpers here (:func:`write_images`, :func:`make_bundle`, :func:`read_csv`) are also
used by ``test_predict_resume.py`` and ``test_predict_ddp.py``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_cad.cli import main
from tests.factories.synth import synthetic_cxr

IMAGE_SIZE = 64
CLASSES = ["NORMAL", "PNEUMONIA"]


def cohort_pixels(n: int, *, size: int = 96, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """``n`` synthetic radiographs as uint8 (each spans 0..255 exactly) with labels, half positive."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        label = CLASSES[k % 2]
        img = np.rint(synthetic_cxr(rng, size, opacity=label == "PNEUMONIA") * 255).astype(np.uint8)
        img.flat[0], img.flat[-1] = 0, 255  # full range: DICOM min/max scaling == PNG /255
        out.append((img, label))
    return out


def write_images(root: Path, n: int, *, fmt: str = "png", seed: int = 0, size: int = 96) -> list[tuple[Path, str]]:
    """Write ``n`` cohort images as PNG or as 12-bit CR DICOM (same pixels); (path, label) list."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for k, (img, label) in enumerate(cohort_pixels(n, size=size, seed=seed)):
        if fmt == "png":
            path = root / f"img{k:03d}.png"
            Image.fromarray(img).save(path)
        else:
            from tests.factories.dicom import write_dicom

            path = write_dicom(
                root / f"img{k:03d}.dcm", img.astype(np.uint16) * 16, bits_stored=12, patient_id=f"P{k:03d}"
            )
        files.append((path, label))
    return files


def write_manifest(path: Path, files: list[tuple[Path, str]]) -> Path:
    import pandas as pd

    rows = [
        {
            "path": str(p.relative_to(path.parent)),
            "label": lab,
            "patient_id": f"P{k:03d}",
            "sop_instance_uid": f"1.2.3.{k}",
        }
        for k, (p, lab) in enumerate(files)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_bundle(path: Path, *, seed: int = 0, n_fit: int = 40, C: float = 0.1) -> Path:
    """A ResNet18 bundle (64 px) that separates the synthetic cohort a little.

    Random conv weights; BatchNorm statistics measured on the cohort; the head fitted by
    logistic regression on the pooled features. Takes a few seconds on one core.
    """
    from sklearn.linear_model import LogisticRegression

    from cxr_cad.inference.inputs import make_preprocess
    from cxr_cad.model import init_model, save_bundle
    from cxr_cad.transforms import TransformSpec

    spec = TransformSpec.for_init(1, image_size=IMAGE_SIZE)
    model, _ = init_model("none", 2, 1, seed=seed)
    pre = make_preprocess(spec)
    data = cohort_pixels(n_fit, seed=seed + 1000)
    x = torch.stack([pre(img.astype(np.float32) / 255) for img, _ in data])
    y = np.array([CLASSES.index(lab) for _, lab in data])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the cohort
    head, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        model.train()
        model(x)
        model.eval()
        feats = model(x).numpy()
    clf = LogisticRegression(C=C, max_iter=5000).fit(feats, y)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = torch.from_numpy(clf.coef_[0]).float()
        head.bias[1] = float(clf.intercept_[0])
    model.fc = head
    save_bundle(
        path,
        model,
        classes=CLASSES,
        positive_class="PNEUMONIA",
        transform_spec=spec,
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash="synthetic",
    )
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "model.pt")


def _predict(sources, out, bundle, *extra) -> int:
    return main(
        [
            "-q",
            "predict",
            *map(str, sources),
            "--model",
            str(bundle),
            "--out",
            str(out),
            "--workers",
            "0",
            "--batch-size",
            "8",
            *extra,
        ]
    )


def test_mixed_folder_every_file_in_exactly_one_csv(tmp_path, bundle_path, capsys):
    from tests.factories.dicom import truncate_file, write_dicom, write_sr

    src = tmp_path / "export"
    good = [p for p, _ in write_images(src / "png", 5)] + [p for p, _ in write_images(src / "dcm", 4, fmt="dicom")]
    (src / "notes.txt").write_text("not an image")
    (src / "empty.dcm").write_bytes(b"")
    write_sr(src / "report_sr.dcm")
    write_dicom(src / "lateral.dcm", view_position="LL")
    write_dicom(src / "ct.dcm", modality="CT")
    truncate_file(write_dicom(src / "cut.dcm", transfer_syntax="explicit"), 0.5)
    every = sorted(str(p.absolute()) for p in src.rglob("*") if p.is_file())

    assert _predict([src], tmp_path / "out", bundle_path, "--workers", "2") == 0
    preds = read_csv(tmp_path / "out" / "predictions.csv")
    rejected = read_csv(tmp_path / "out" / "rejected.csv")
    scored = [r["path"] for r in preds]
    assert sorted(scored + [r["path"] for r in rejected]) == every
    assert sorted(scored) == sorted(str(p.absolute()) for p in good)
    reasons = {Path(r["path"]).name: r["reason"] for r in rejected}
    assert reasons["notes.txt"] == "NOT_DICOM"
    assert reasons["empty.dcm"] == "EMPTY_FILE"
    assert reasons["report_sr.dcm"] in ("NOT_AN_IMAGE_SOP_CLASS", "NO_PIXEL_DATA")
    assert reasons["lateral.dcm"] == "LATERAL_VIEW"
    assert reasons["ct.dcm"] == "UNSUPPORTED_MODALITY"
    assert reasons["cut.dcm"] in ("DECODE_FAILED", "UNREADABLE")
    assert all(r["detail"] for r in rejected)
    for r in preds:
        assert 0.0 <= float(r["probability"]) <= 1.0
        assert r["decision"] == ("PNEUMONIA" if float(r["probability"]) >= 0.5 else "NORMAL")
        assert len(r["model_sha256"]) == 64
        assert r["sop_instance_uid"]
    assert all(r["sop_instance_uid"].startswith("sha256:") for r in preds if r["path"].endswith(".png"))
    assert all(r["study_instance_uid"] for r in preds if r["path"].endswith(".dcm"))
    out = capsys.readouterr().out
    assert "9 scored" in out and "6 rejected" in out and "LATERAL_VIEW 1" in out

    # --allow-lateral and --modalities any score what the default policy rejects (new --out)
    assert _predict([src], tmp_path / "out2", bundle_path, "--allow-lateral", "--modalities", "any") == 0
    scored2 = {Path(r["path"]).name for r in read_csv(tmp_path / "out2" / "predictions.csv")}
    assert {"lateral.dcm", "ct.dcm"} <= scored2


def test_internal_error_becomes_a_row_not_a_crash(tmp_path, bundle_path, monkeypatch):
    import cxr_cad.io

    files = [p for p, _ in write_images(tmp_path / "in", 4)]
    real = cxr_cad.io.read_image

    def flaky(path, **kw):
        if Path(path).name == "img002.png":
            raise ZeroDivisionError("injected bug")
        return real(path, **kw)

    monkeypatch.setattr(cxr_cad.io, "read_image", flaky)
    assert _predict([tmp_path / "in"], tmp_path / "out", bundle_path) == 0
    rejected = read_csv(tmp_path / "out" / "rejected.csv")
    assert [(Path(r["path"]).name, r["reason"]) for r in rejected] == [("img002.png", "INTERNAL_ERROR")]
    assert "ZeroDivisionError: injected bug" in rejected[0]["detail"]
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == len(files) - 1


def test_manifest_source_copies_labels_and_threshold_override(tmp_path, bundle_path):
    files = write_images(tmp_path / "cohort" / "img", 6)
    manifest = write_manifest(tmp_path / "cohort" / "manifest.csv", files)
    assert _predict([manifest], tmp_path / "out", bundle_path, "--threshold", "0") == 0
    preds = read_csv(tmp_path / "out" / "predictions.csv")
    assert [(Path(r["path"]).name, r["label"]) for r in preds] == [(p.name, lab) for p, lab in files]
    assert {r["decision"] for r in preds} == {"PNEUMONIA"} and {r["threshold"] for r in preds} == {"0"}


def test_bad_model_file_exits_1_with_message(tmp_path, capsys):
    """A corrupt bundle is a failure of the work (exit 1); a model path that does not exist is
    what the user gave (exit 2, found before anything loads: docs/cli.md#exit-codes)."""
    write_images(tmp_path / "in", 2)
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"this is not a torch file")
    assert _predict([tmp_path / "in"], tmp_path / "out", bad) == 1
    err = capsys.readouterr().err
    assert "model.pt" in err and "failed" in err
    assert _predict([tmp_path / "in"], tmp_path / "out", tmp_path / "missing.pt") == 2
    assert "missing.pt" in capsys.readouterr().err


def test_unwritable_out_is_a_usage_error_with_message(tmp_path, bundle_path, capsys):
    """An output folder that cannot be created is what the user gave: exit 2 (docs/cli.md#exit-codes)."""
    write_images(tmp_path / "in", 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert _predict([tmp_path / "in"], blocker / "out", bundle_path) == 2
    err = capsys.readouterr().err
    assert "a_file" in err and "out" in err


def test_missing_source_and_other_run_in_out_are_usage_errors(tmp_path, bundle_path, capsys):
    write_images(tmp_path / "in", 3)
    assert _predict([tmp_path / "nope"], tmp_path / "out", bundle_path) == 2
    assert _predict([tmp_path / "in"], tmp_path / "out", bundle_path) == 0
    first = (tmp_path / "out" / "predictions.csv").read_text()
    assert _predict([tmp_path / "in"], tmp_path / "out", bundle_path) == 0  # finished: same result again
    assert (tmp_path / "out" / "predictions.csv").read_text() == first
    write_images(tmp_path / "in2", 2)
    capsys.readouterr()
    assert _predict([tmp_path / "in2"], tmp_path / "out", bundle_path) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _predict([tmp_path / "in2"], tmp_path / "out", bundle_path, "--overwrite") == 0
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == 2


def test_out_folder_inside_the_source_folder_is_not_an_input(tmp_path, bundle_path):
    write_images(tmp_path / "in", 3)
    out = tmp_path / "in" / "scores"
    assert _predict([tmp_path / "in"], out, bundle_path) == 0
    assert _predict([tmp_path / "in"], out, bundle_path) == 0  # its own CSVs do not change the inputs
    assert len(read_csv(out / "predictions.csv")) == 3 and read_csv(out / "rejected.csv") == []


def _probabilities(out: Path) -> dict[str, float]:
    return {Path(r["path"]).name: float(r["probability"]) for r in read_csv(out / "predictions.csv")}


def test_bf16_scores_match_fp32(tmp_path, bundle_path):
    from cxr_cad.metrics import roc_auc

    files = write_images(tmp_path / "in", 64, seed=7)
    manifest = write_manifest(tmp_path / "manifest.csv", files)
    assert _predict([manifest], tmp_path / "fp32", bundle_path, "--precision", "fp32") == 0
    assert _predict([manifest], tmp_path / "bf16", bundle_path, "--precision", "bf16") == 0
    p32, p16 = _probabilities(tmp_path / "fp32"), _probabilities(tmp_path / "bf16")
    names = sorted(p32)
    a, b = np.array([p32[n] for n in names]), np.array([p16[n] for n in names])
    y = np.array([dict((p.name, lab) for p, lab in files)[n] == "PNEUMONIA" for n in names], dtype=int)
    assert a.std() > 0.05, "the test model must give non-trivial scores"
    assert 0.6 < roc_auc(y, a) < 1.0, "the test model must rank, but not perfectly"
    assert np.abs(a - b).max() <= 0.02
    assert abs(roc_auc(y, a) - roc_auc(y, b)) <= 0.002


def test_same_images_as_dicom_and_png_agree(tmp_path, bundle_path):
    write_images(tmp_path / "png", 8, seed=3)
    write_images(tmp_path / "dcm", 8, seed=3, fmt="dicom")
    assert _predict([tmp_path / "png"], tmp_path / "out_png", bundle_path, "--precision", "fp32") == 0
    assert _predict([tmp_path / "dcm"], tmp_path / "out_dcm", bundle_path, "--precision", "fp32") == 0
    png, dcm = _probabilities(tmp_path / "out_png"), _probabilities(tmp_path / "out_dcm")
    assert len(png) == len(dcm) == 8
    for name, p in png.items():
        assert abs(p - dcm[name.replace(".png", ".dcm")]) <= 0.01, name


def test_small_per_batch_ops_run_on_one_thread_beside_a_runtime_with_its_own_pool():
    """With OpenVINO / onnxruntime on the CPU, torch and BLAS work of the main process runs on
    one thread during the batches (their pools spun against the runtime's), then is restored."""
    from threadpoolctl import threadpool_info

    from cxr_cad.inference import predict as engine

    seen = []

    class Scoring:
        def records(self, batch):
            blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
            seen.append((torch.get_num_threads(), blas))
            return [{"index": 0}]

    class Journal:
        def append(self, records):
            pass

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert engine._run_batches(Scoring(), [{}], Journal(), 1, own_threads=True) == 1
        assert seen[-1][0] == 1 and all(n == 1 for n in seen[-1][1])
        assert torch.get_num_threads() == 2  # restored
        engine._run_batches(Scoring(), [{}], Journal(), 1, own_threads=False)
        assert seen[-1][0] == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no os.nice on this platform")
def test_decode_workers_run_below_the_network_on_the_cpu(tmp_path, bundle_path, monkeypatch):
    """Decode workers are re-niced by DECODE_NICE when the network runs on the CPU in the main
    process (its threads would otherwise be pre-empted by decoding); scores are unchanged."""
    import cxr_cad.io
    from cxr_cad.inference import predict as engine

    write_images(tmp_path / "in", 6)
    real = cxr_cad.io.read_image
    seen = tmp_path / "nice.txt"

    def recording(path, **kw):  # runs in the decode workers (forked with this patch)
        with open(seen, "a") as f:
            f.write(f"{os.getpid()} {os.nice(0)}\n")
        return real(path, **kw)

    monkeypatch.setattr(cxr_cad.io, "read_image", recording)
    base = os.nice(0)
    assert _predict([tmp_path / "in"], tmp_path / "w2", bundle_path, "--workers", "2") == 0
    rows = [line.split() for line in seen.read_text().splitlines()]
    assert rows and all(int(pid) != os.getpid() for pid, _ in rows)
    assert {int(n) for _, n in rows} == {min(base + engine.DECODE_NICE, 19)}
    seen.unlink()
    assert _predict([tmp_path / "in"], tmp_path / "w0", bundle_path) == 0  # --workers 0: this process
    assert {int(n) for _, n in (line.split() for line in seen.read_text().splitlines())} == {base}
    assert _probabilities(tmp_path / "w2") == _probabilities(tmp_path / "w0")
