"""The Python API: the notebook example of docs/api.md runs as written, and the API's own rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import cxr_cad
from cxr_cad.config.accept import AcceptPolicy
from cxr_cad.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    """The ```python code blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_docs_example_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name} block {i + 1}", "exec"), namespace)  # noqa: S102 - our own docs
    out = capsys.readouterr().out
    assert "rejected" in out and "AUC" in out
    # what the example promises
    manifest = namespace["manifest"]
    assert isinstance(manifest, pd.DataFrame) and len(manifest) >= 20
    assert (namespace["report"].out_dir / "report.html").is_file()
    assert namespace["bundle"].path and Path(namespace["bundle"].path).is_file()
    assert set(namespace["predictions"]["label"]) <= {"NORMAL", "PNEUMONIA"}
    assert namespace["metrics"]["cohort"]["n_images_evaluated"] == len(namespace["test_df"])
    assert (tmp_path / "api_example" / "crossval" / "oof_predictions.csv").is_file()


def test_predict_never_stops_on_a_bad_file(tmp_path, monkeypatch):
    """One unreadable file among good ones is a rejected row (checked with the bundle of the
    docs example being too slow to share: a random-weight bundle here)."""
    import torch

    from cxr_cad.model import build_resnet18, save_bundle
    from cxr_cad.transforms import TransformSpec
    from tests.factories.synth import write_png_cohort

    torch.manual_seed(0)
    bundle = save_bundle(
        tmp_path / "m.pt",
        build_resnet18(2, 1),
        classes=["NORMAL", "PNEUMONIA"],
        positive_class="PNEUMONIA",
        transform_spec=TransformSpec(image_size=32),
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash="0" * 64,
    )
    df = write_png_cohort(tmp_path / "img", n_patients=3, images_per_patient=1, size=32)
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    pred, rejected = cxr_cad.predict(bundle, [tmp_path / "img"], workers=0, device="cpu")
    assert len(pred) == len(df)
    assert set(rejected["reason"]) <= {"NOT_DICOM", "DECODE_FAILED", "UNREADABLE", "UNSUPPORTED_FORMAT"}
    assert any(p.endswith("broken.png") for p in rejected["path"])


def test_accept_policy_from_options():
    assert AcceptPolicy.from_options().modalities == ("CR", "DX", "DR")
    assert AcceptPolicy.from_options(modalities="any").modalities == ()
    assert AcceptPolicy.from_options(modalities=["any"]).modalities == ()
    p = AcceptPolicy.from_options(modalities="cr, dx", allow_lateral=True, apply_voi=False)
    assert (p.modalities, p.reject_lateral, p.apply_voi) == (("CR", "DX"), False, False)
    assert p.record() == {"modalities": ["CR", "DX"], "reject_lateral": False, "apply_voi": False}
    with pytest.raises(ConfigError, match="modalities is empty"):
        AcceptPolicy.from_options(modalities=" , ")
    with pytest.raises(ConfigError, match="max_image_bytes"):
        AcceptPolicy(max_image_bytes=0)


def test_bad_api_values_are_config_errors(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match="workers"):
        cxr_cad.ingest([tmp_path / "a"], workers=0)
    with pytest.raises(ConfigError, match="positive class"):
        cxr_cad.ingest([tmp_path / "a"], classes=["A", "B"], positive_class="C")
    with pytest.raises(ConfigError, match="folds"):
        cxr_cad.crossval(pd.DataFrame(), None, tmp_path / "cv", folds=1)
    with pytest.raises(ConfigError):
        cxr_cad.api.as_config({"epochs": "many"})


def test_import_is_light_and_names_are_lazy():
    code = (
        "import sys, cxr_cad; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
        "f = cxr_cad.ingest; assert 'torch' not in sys.modules; print(f.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "cxr_cad.api._ingest"
    with pytest.raises(AttributeError):
        cxr_cad.no_such_function  # noqa: B018
