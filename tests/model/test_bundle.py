"""cxr_cad.model bundles: weights_only round trip, metadata, refusals, atomic writes."""

from __future__ import annotations

import hashlib
from datetime import datetime

import numpy as np
import pytest
import torch

import cxr_cad.model.bundle as bundle_mod
from cxr_cad.errors import BundleError, OutputError
from cxr_cad.model import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    ProbabilityAverage,
    build_resnet18,
    init_model,
    load_bundle,
    save_bundle,
)
from cxr_cad.transforms import TransformSpec

CLASSES = ["NORMAL", "PNEUMONIA"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    m, _ = init_model("none", 2, 1, seed=0)
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer would show in the outputs
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _save(path, model, **overrides):
    kwargs = dict(
        classes=CLASSES,
        positive_class="PNEUMONIA",
        transform_spec=TransformSpec(image_size=64),
        threshold=0.37,
        threshold_method="youden",
        threshold_params={},
        threshold_chosen_on={"manifest_hash": "v" * 64, "n": 40, "description": "validation split"},
        manifest_hash="m" * 64,
        parent_bundle_sha256=None,
        train_config={"epochs": 3, "lr": 1e-3, "augment": {"scale": (0.9, 1.1)}},
        init_record={"init": "none", "seed": 0},
        extra={"note": np.float32(0.5)},
    )
    kwargs.update(overrides)
    return save_bundle(path, model, **kwargs)


@pytest.fixture
def saved(tmp_path, model):
    return _save(tmp_path / "model.pt", model)


def _rewrite(src, dst, change):
    d = torch.load(src, weights_only=True)
    change(d)
    torch.save(d, dst)
    return dst


def test_round_trip_weights_only_identical_outputs(saved, model):
    raw = torch.load(saved, weights_only=True)  # plain types only
    assert raw["format"] == BUNDLE_FORMAT and raw["format_version"] == BUNDLE_VERSION == 2
    assert raw["arch"]["members"] == 1 and raw["arch"]["tta"] == []
    b = load_bundle(saved)
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(b.model(x), model(x))
    assert not b.model.training
    assert b.classes == CLASSES and b.positive_class == "PNEUMONIA" and b.positive_index == 1
    assert b.transform_spec == TransformSpec(image_size=64)
    assert b.threshold == pytest.approx(0.37) and b.threshold_method == "youden"
    assert b.threshold_selection["chosen_on"]["n"] == 40
    assert b.manifest_hash == "m" * 64 and b.parent_bundle_sha256 is None
    assert {"cxr_cad", "python", "torch", "monai", "pydicom", "numpy"} <= set(b.versions)  # infra.software_versions
    assert raw["arch"]["name"] == b.arch == "resnet18"
    assert all(type(v) is str for v in b.versions.values())
    assert datetime.fromisoformat(b.created).utcoffset().total_seconds() == 0
    assert b.train_config["augment"]["scale"] == [0.9, 1.1]
    assert b.meta["extra"]["note"] == 0.5 and b.meta["input"] == {"size": 64, "channels": 1}
    assert b.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
    probs = b.positive_probability(torch.tensor([[0.0, 0.0], [0.0, 10.0]]))
    torch.testing.assert_close(probs, torch.tensor([0.5, 1 / (1 + np.exp(-10.0))], dtype=torch.float32))


def test_retraining_records_parent_and_keeps_same_class_head(saved, tmp_path, model):
    parent = load_bundle(saved)
    child, rec = init_model(str(saved), 2, 1, classes=CLASSES)
    assert rec["init"] == "bundle" and rec["parent_bundle_sha256"] == parent.sha256 and rec["head"] == "loaded"
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(child.eval()(x), model(x))
    other, rec2 = init_model(str(saved), 3, 1, classes=["A", "B", "C"])
    assert rec2["head"] == "reinitialised" and tuple(other.fc.weight.shape) == (3, 512)
    assert torch.equal(other.layer4[1].conv2.weight, model.layer4[1].conv2.weight)
    out = _save(tmp_path / "child.pt", child, parent_bundle_sha256=rec["parent_bundle_sha256"], init_record=rec)
    assert load_bundle(out).parent_bundle_sha256 == parent.sha256


def test_missing_and_not_a_file(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope.pt")
    with pytest.raises(BundleError, match="not a file"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_files_refused(saved, tmp_path, damage):
    data = saved.read_bytes()
    bad = tmp_path / f"{damage}.pt"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x89PNG not a model" * 50, "empty": b""}[damage])
    with pytest.raises(BundleError, match=f"{damage}.pt: not a readable cxr_cad model bundle"):
        load_bundle(bad)


def test_not_a_bundle(tmp_path, model):
    sd = tmp_path / "weights.pth"
    torch.save(model.state_dict(), sd)
    with pytest.raises(BundleError, match="bare state dict"):
        load_bundle(sd)
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3, "weights": [1, 2]}, other)
    with pytest.raises(BundleError, match="not a cxr_cad model bundle"):
        load_bundle(other)


class _NotPlain:
    pass


def test_pickled_objects_refused_by_weights_only(saved, tmp_path):
    d = torch.load(saved, weights_only=True)
    d["extra"] = {"obj": _NotPlain()}
    evil = tmp_path / "evil.pt"
    torch.save(d, evil)
    with pytest.raises(BundleError, match="not a readable"):
        load_bundle(evil)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format_version=BUNDLE_VERSION + 1), "newer than this cxr_cad supports"),
        (lambda d: d["arch"].update(tta=["vflip"]), "arch.tta"),
        (lambda d: d["arch"].update(members=0), "arch.members"),
        (lambda d: d["transform_spec"].update(clahe=True), r"unknown keys \['clahe'\]"),
        (lambda d: d["transform_spec"].update(version=5), "transform spec version 5 is newer"),
        (lambda d: d.update(positive_class="EFFUSION"), "'EFFUSION' is not one of the classes"),
        (lambda d: d.update(classes=["NORMAL", "NORMAL"]), "distinct"),
        (lambda d: d["state_dict"].pop("layer3.0.bn1.running_var"), "layer3.0.bn1.running_var"),
        (lambda d: d["state_dict"].update({"fc.weight": torch.zeros(3, 512)}), "fc.weight shape"),
        (lambda d: d["arch"].update(name="vgg16"), r"not supported \(registered: resnet18, resnet50, densenet121\)"),
        (lambda d: d["arch"].update(in_channels=3), "disagrees"),
        (lambda d: d.update(threshold=1.5), "threshold 1.5"),
        (lambda d: d.pop("manifest_hash"), "lacks.*manifest_hash"),
    ],
)
def test_bundles_that_cannot_be_honoured(saved, tmp_path, change, message):
    bad = _rewrite(saved, tmp_path / "bad.pt", change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)


def test_save_refuses_inconsistent_or_non_plain_values(tmp_path, model):
    with pytest.raises(BundleError, match="positive_class 'X'"):
        _save(tmp_path / "a.pt", model, positive_class="X")
    with pytest.raises(BundleError, match="threshold"):
        _save(tmp_path / "a.pt", model, threshold=float("nan"))
    with pytest.raises(BundleError, match="2 outputs but 3 classes"):
        _save(tmp_path / "a.pt", model, classes=["A", "B", "C"], positive_class="A")
    with pytest.raises(BundleError, match="input channel"):
        _save(tmp_path / "a.pt", model, transform_spec=TransformSpec.for_init(3))
    with pytest.raises(BundleError, match=r"extra\.obj"):
        _save(tmp_path / "a.pt", model, extra={"obj": _NotPlain()})
    assert not list(tmp_path.iterdir())


def test_atomic_write_keeps_old_bundle_on_failure(saved, model, monkeypatch):
    before = saved.read_bytes()

    def failing_save(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod.torch, "save", failing_save)
    with pytest.raises(OutputError, match="No space left"):
        _save(saved, model, threshold=0.9)
    assert saved.read_bytes() == before
    # no temporary file is left behind (the model card is the training run's, not save_bundle's)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.pt"]


def test_wrapped_and_channels_last_models_save_plain_state(tmp_path, model):
    import copy

    wrapped = torch.nn.DataParallel(copy.deepcopy(model)).to(memory_format=torch.channels_last)
    path = _save(tmp_path / "w.pt", wrapped, threshold_method={"method": "sensitivity", "params": {"target": 0.9}})
    b = load_bundle(path)
    assert b.threshold_method == "sensitivity" and b.threshold_selection["params"] == {"target": 0.9}
    assert list(b.model.state_dict()) == list(model.state_dict())


def test_version1_bundle_loads_with_its_old_intensity_behaviour(tmp_path, saved, model):
    """A bundle written before format 2 (spec version 1, no arch.members/tta) loads as one network
    whose eval chain has no per-image intensity scaling, as when it was written."""

    def to_v1(d):
        d["format_version"] = 1
        d["arch"] = {k: v for k, v in d["arch"].items() if k not in ("members", "tta")}
        d["transform_spec"] = {k: v for k, v in d["transform_spec"].items() if not k.startswith("intensity")}
        d["transform_spec"]["version"] = 1

    b = load_bundle(_rewrite(saved, tmp_path / "v1.pt", to_v1))
    assert b.transform_spec.intensity == "none" and b.transform_spec.image_size == 64
    assert not isinstance(b.model, ProbabilityAverage)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(b.model(x), model(x))
    assert load_bundle(saved).transform_spec.intensity == "percentile"


@pytest.mark.parametrize("hflip", [False, True])
def test_ensemble_bundle_scores_the_mean_probability(tmp_path, hflip):
    torch.manual_seed(0)
    nets = [build_resnet18(2, 1).eval() for _ in range(3)]
    path = _save(tmp_path / "ens.pt", ProbabilityAverage(nets, hflip=hflip))
    b = load_bundle(path)
    assert isinstance(b.model, ProbabilityAverage) and len(b.model.members) == 3 and b.model.hflip == hflip
    assert b.meta["arch"]["members"] == 3 and b.meta["arch"]["tta"] == (["hflip"] if hflip else [])
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        views = [x, torch.flip(x, dims=(-1,))] if hflip else [x]
        expected = torch.stack([torch.softmax(n(v), 1) for n in nets for v in views]).mean(0)
        got = torch.softmax(b.model(x), 1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(b.positive_probability(b.model(x)), expected[:, 1], atol=1e-6)
