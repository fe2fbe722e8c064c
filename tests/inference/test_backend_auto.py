"""``predict --backend auto``: the fastest backend that gives torch fp32's probabilities, chosen once
per machine and bundle, cached, recorded; a failing backend falls back to torch with its reason.

The cache lives in a temporary folder (``CXR_CAD_BACKEND_CACHE``); ``AUTO_MIN_IMAGES`` is lowered so
a small synthetic cohort makes the choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from cxr_cad.cli import main  # noqa: E402
from cxr_cad.inference import backend as auto  # noqa: E402
from cxr_cad.inference import backend_cache, backend_candidates  # noqa: E402
from tests.inference.test_predict import make_bundle, read_csv, write_images  # noqa: E402

N = 20


@pytest.fixture(scope="module")
def bundle_with_shift(tmp_path_factory) -> Path:
    """A synthetic-cohort bundle that carries a shift summary (so the shift score must survive)."""
    from cxr_cad.model import load_bundle, save_bundle
    from cxr_cad.shift.monitor import summarise_training

    root = tmp_path_factory.mktemp("auto")
    plain = make_bundle(root / "plain.pt")
    b = load_bundle(plain)
    files = write_images(root / "train", 40, seed=11)
    df = pd.DataFrame({"path": [str(p) for p, _ in files], "patient_id": [f"P{k}" for k in range(len(files))]})
    shift = summarise_training(b.model, b.transform_spec, df.iloc[:30], df.iloc[30:], workers=0)
    assert shift is not None
    return (
        save_bundle(
            root / "model.pt",
            b.model,
            classes=b.classes,
            positive_class=b.positive_class,
            transform_spec=b.transform_spec,
            threshold=0.5,
            threshold_method="fixed",
            manifest_hash="synthetic",
            extra={"shift": shift},
        ).parent
        / "model.pt"
    )


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(auto.CACHE_ENV, str(folder))
    monkeypatch.setattr(auto, "AUTO_MIN_IMAGES", 0)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_images(root, N, seed=5)
    return root


def _predict(out: Path, bundle: Path, images: Path, *extra: str) -> int:
    args = ["-q", "predict", str(images), "--model", str(bundle), "--out", str(out), "--workers", "0"]
    return main([*args, "--batch-size", "8", *extra])


def _rows(out: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in read_csv(out / "predictions.csv")}


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, bundle_with_shift, images) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("ref") / "out"
    assert _predict(out, bundle_with_shift, images, "--backend", "torch", "--precision", "fp32") == 0
    return _rows(out)


def _assert_same_scores(rows: dict[str, dict], reference: dict[str, dict]) -> None:
    assert rows.keys() == reference.keys()
    for name, r in rows.items():
        ref = reference[name]
        assert abs(float(r["probability"]) - float(ref["probability"])) <= auto.TOLERANCE, name
        assert ref["shift_score"] != "" and abs(float(r["shift_score"]) - float(ref["shift_score"])) <= 1e-2, name
        assert r["decision"] == ref["decision"] or abs(float(ref["probability"]) - 0.5) < auto.TOLERANCE


def test_auto_chooses_a_verified_backend_records_it_and_caches_it(
    tmp_path, cache, bundle_with_shift, images, reference, capsys
):
    assert _predict(tmp_path / "a", bundle_with_shift, images) == 0  # --backend auto is the default
    first = _summary(tmp_path / "a")["runtime"]
    choice = first["backend_choice"]
    names = [c["name"] for c in choice["candidates"]]
    assert names[:1] == ["torch fp32"] and {"onnxruntime fp32", "openvino fp32"} <= set(names)
    chosen = next(c for c in choice["candidates"] if c["name"] == choice["name"])
    assert chosen["verified"] and chosen["max_abs_prob_diff"] <= auto.TOLERANCE
    assert chosen["images_per_s"] == max(c.get("images_per_s", 0) for c in choice["candidates"])
    assert not choice["cached"] and "fastest of" in choice["reason"]
    assert (first["backend"], first["precision"]) == tuple(choice["name"].split())
    assert f"cpu {choice['name']})" in capsys.readouterr().out  # the summary line names the real backend
    _assert_same_scores(_rows(tmp_path / "a"), reference)
    files = list(cache.glob("*/choice.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["name"] == choice["name"]

    assert _predict(tmp_path / "b", bundle_with_shift, images) == 0  # second run: the cached choice
    second = _summary(tmp_path / "b")["runtime"]["backend_choice"]
    assert second["cached"] and second["name"] == choice["name"] and second["cache"] == str(files[0].parent)


@pytest.mark.parametrize("name", ["onnxruntime fp32", "openvino fp32"])
def test_each_exported_runtime_gives_torch_fp32_scores_and_the_shift_score(
    tmp_path, cache, bundle_with_shift, images, reference, monkeypatch, capsys, name
):
    """Force each candidate in turn (as the only one faster than torch): same scores, shift kept."""

    def speed(run, x, info) -> float:
        if not isinstance(run, backend_candidates.HybridForward):
            return 1.0
        kind = "onnxruntime" if isinstance(run.backbone, backend_candidates.OnnxRuntimeModel) else "openvino"
        return 1e6 if f"{kind} fp32" == name else 1.0

    monkeypatch.setattr(backend_candidates, "_speed", speed)
    assert _predict(tmp_path / "out", bundle_with_shift, images) == 0
    rt = _summary(tmp_path / "out")["runtime"]
    assert rt["backend_choice"]["name"] == name
    assert f"cpu {name})" in capsys.readouterr().out
    _assert_same_scores(_rows(tmp_path / "out"), reference)


def test_a_backend_that_disagrees_is_dropped_with_its_reason(tmp_path, cache, bundle_with_shift, images, monkeypatch):
    class Noisy(backend_candidates.OnnxRuntimeModel):
        def __call__(self, x):
            out = super().__call__(x)
            return out + torch.randn_like(out)  # features moved: probabilities change by far more than 1e-3

    monkeypatch.setattr(backend_candidates, "OnnxRuntimeModel", Noisy)
    assert _predict(tmp_path / "out", bundle_with_shift, images) == 0
    rows = {c["name"]: c for c in _summary(tmp_path / "out")["runtime"]["backend_choice"]["candidates"]}
    assert rows["onnxruntime fp32"]["verified"] is False
    assert "differ from torch fp32" in rows["onnxruntime fp32"]["reason"]
    assert _summary(tmp_path / "out")["runtime"]["backend_choice"]["name"] != "onnxruntime fp32"


def test_a_backend_that_fails_to_load_is_dropped_and_a_cached_one_falls_back_to_torch(
    tmp_path, cache, bundle_with_shift, images, reference, monkeypatch, capsys
):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated: no CPU plugin\nsecond line")

    monkeypatch.setattr(backend_candidates, "OpenVinoModel", broken)
    assert _predict(tmp_path / "a", bundle_with_shift, images) == 0
    rows = {c["name"]: c for c in _summary(tmp_path / "a")["runtime"]["backend_choice"]["candidates"]}
    assert rows["openvino fp32"]["reason"] == "failed to load or run: simulated: no CPU plugin"

    # a cached choice that no longer loads: torch fp32, one warning line, the stale choice removed
    (choice_file,) = cache.glob("*/choice.json")
    record = json.loads(choice_file.read_text())
    choice_file.write_text(json.dumps({**record, "name": "openvino fp32"}))
    capsys.readouterr()
    assert _predict(tmp_path / "b", bundle_with_shift, images) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "failed to load" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "torch fp32 instead" in warnings[0]
    rt = _summary(tmp_path / "b")["runtime"]
    assert (rt["backend"], rt["precision"]) == ("torch", "fp32")
    assert "cached choice openvino fp32 failed to load (simulated: no CPU plugin)" in rt["backend_choice"]["reason"]
    assert not choice_file.exists()
    for name, r in _rows(tmp_path / "b").items():
        assert r["probability"] == reference[name]["probability"]


def test_small_runs_and_explicit_precision_do_not_choose(tmp_path, cache, bundle_with_shift, images, monkeypatch):
    monkeypatch.setattr(auto, "AUTO_MIN_IMAGES", 1000)
    assert _predict(tmp_path / "a", bundle_with_shift, images) == 0
    rt = _summary(tmp_path / "a")["runtime"]
    assert (rt["backend"], rt["precision"]) == ("torch", "fp32")
    assert "not worth choosing" in rt["backend_choice"]["reason"]
    assert not cache.exists()  # nothing written
    assert _predict(tmp_path / "b", bundle_with_shift, images, "--precision", "bf16") == 0
    rt = _summary(tmp_path / "b")["runtime"]
    assert (rt["backend"], rt["precision"]) == ("torch", "bf16") and "backend_choice" not in rt


def test_allow_int8_needs_auto(tmp_path, bundle_with_shift, images, capsys):
    assert _predict(tmp_path / "a", bundle_with_shift, images, "--backend", "torch", "--allow-int8") == 2
    assert "--allow-int8 needs --backend auto" in capsys.readouterr().err


def test_cache_key_changes_with_bundle_versions_and_cpu(monkeypatch, cache):
    from cxr_cad import runtime

    info = runtime.resolve_runtime("cpu", "fp32")
    a = auto.cache_folder("a" * 64, info)
    assert a.parent == cache and a == auto.cache_folder("a" * 64, info)
    assert auto.cache_folder("b" * 64, info) != a
    monkeypatch.setattr(backend_cache, "cpu_identity", lambda: {"model": "other", "flags": "avx2"})
    assert auto.cache_folder("a" * 64, info) != a
    monkeypatch.setattr(backend_cache, "software_versions", lambda names: {n: "0" for n in names})
    assert backend_cache.cache_key("a" * 64, info)["versions"] == {n: "0" for n in backend_cache.CACHE_PACKAGES}
    np.testing.assert_equal(auto.TOLERANCE, 1e-3)


def test_summary_line_names_backend_and_precision(tmp_path):
    """Issue 23 defect 11: an int8 model's summary line said "cpu fp32"."""
    from cxr_cad.inference.result import PredictResult

    res = PredictResult(tmp_path, 1, 1, 0, 0, {}, 0, 1, 1.0, "x", 0.5, {"device": "cpu", "backend": "openvino"})
    res.runtime["precision"] = "int8"
    assert "1.0 images/s, cpu openvino int8)" in res.summary_line()
