"""The architecture registry: every entry builds, adapts a gray stem, loads a torchvision-format
ImageNet checkpoint through its key map (hash checked), folds its BatchNorm, fine-tunes its head
and round-trips through a bundle. Adding a network to the registry adds it to every test here."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxr_cad.errors import BundleError, ConfigError, WeightsError
from cxr_cad.model import (
    ARCHITECTURES,
    arch_names,
    build_model,
    build_network,
    find_arch,
    fold_batchnorm,
    get_arch,
    head_of,
    init_model,
    load_bundle,
    save_bundle,
    set_trainable,
)
from cxr_cad.model.batchnorm import conv_bn_pairs
from cxr_cad.transforms import TransformSpec

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = arch_names()
SIZE = 64


def torchvision_name(arch: str, key: str) -> str:
    """The name torchvision's checkpoint gives a MONAI parameter (the inverse of the key map,
    written out independently; DenseNet in the checkpoint's old ``norm.1`` spelling)."""
    if arch == "densenet121":
        key = re.sub(r"\.layers\.(norm|relu|conv)([12])\.", r".\1.\2.", key)
        key = re.sub(r"^class_layers\.out\.", "classifier.", key)
    return key


def fake_imagenet_file(tmp_path: Path, arch: str, seed: int = 0) -> Path:
    """A torchvision-format RGB checkpoint of ``arch`` with random tensors (1000 classes), saved
    under a torch.hub name carrying its own SHA-256 prefix, like torchvision's files."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        net = build_network(1000, 3, arch=arch)
    state = {}
    for k, v in net.state_dict().items():
        if k.endswith("running_var"):
            v = torch.rand(v.shape, generator=g) + 0.5
        elif v.is_floating_point():
            v = torch.randn(v.shape, generator=g) * 0.05
        state[torchvision_name(arch, k)] = v
    tmp = tmp_path / f"{arch}.tmp"
    torch.save(state, tmp)
    named = tmp_path / f"{arch}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(named)
    return named


def spiced(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so folding has something to fold."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.eval()


def test_names_default_first_and_no_torch_import():
    assert ARCHS[0] == "resnet18" and set(ARCHS) == {"resnet18", "resnet50", "densenet121"}
    code = "import sys; from cxr_cad.model.registry import arch_names; arch_names(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_config_accepts_exactly_the_registered_networks():
    """``model.arch`` is validated against config's table of names (config imports no model code)."""
    from cxr_cad.config import load_config
    from cxr_cad.config.choices import ARCH_NAMES, DEFAULT_ARCH

    assert ARCHS == ARCH_NAMES and DEFAULT_ARCH == ARCHS[0]
    for arch in ARCHS:
        assert load_config(None, {"model.arch": arch}).model.arch == arch


def test_unknown_arch_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match="resnet18, resnet50, densenet121"):
        get_arch("vgg16")
    with pytest.raises(ConfigError, match="unknown architecture 'resnet34'"):
        init_model("none", 2, 1, arch="resnet34")
    with pytest.raises(ConfigError):
        build_network(2, 1, arch="Resnet18")
    with pytest.raises(ConfigError, match="needs a path after the colon"):
        init_model("imagenet:", 2, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_with_registry_names(arch):
    spec = get_arch(arch)
    for channels in (1, 3):
        net = build_network(3, channels, arch=arch).eval()
        sd = net.state_dict()
        assert sd[spec.stem_weight].shape[1] == channels
        assert isinstance(net.get_submodule(spec.head), torch.nn.Linear) and sd[spec.head_keys[0]].shape[0] == 3
        net.get_submodule(spec.target_layer)
        assert find_arch(net) is spec and head_of(net) is net.get_submodule(spec.head)
        with torch.no_grad():
            assert net(torch.randn(2, channels, SIZE, SIZE)).shape == (2, 3)
    assert spec.weights_filename.endswith(f"-{spec.weights_sha256_prefix}.pth")
    assert spec.weights_url.startswith("https://download.pytorch.org/models/")


@pytest.mark.parametrize("arch", ARCHS)
def test_fake_imagenet_checkpoint_loads_through_key_map_and_gray_stem_is_summed(tmp_path, arch):
    spec = get_arch(arch)
    path = fake_imagenet_file(tmp_path, arch)
    gray, rec = init_model(f"imagenet:{path}", 2, 1, seed=0, arch=arch)
    rgb, _ = init_model(f"imagenet:{path}", 2, 3, seed=0, arch=arch)
    assert rec["init"] == "imagenet" and rec["conv1"] == "summed over RGB" and rec["head"] == "reinitialised"
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and not rec["verified_imagenet"]
    raw = torch.load(path, weights_only=True)
    stem = raw[torchvision_name(arch, spec.stem_weight)]
    torch.testing.assert_close(gray.state_dict()[spec.stem_weight], stem.sum(1, keepdim=True))
    for k, v in rgb.state_dict().items():  # every non-head tensor came from the file, by its mapped name
        if k not in spec.head_keys:
            assert torch.equal(v, raw[torchvision_name(arch, k)]), k
    rgb.get_submodule(spec.head).load_state_dict(gray.get_submodule(spec.head).state_dict())
    t = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # the gray network on a gray image == the RGB network on it replicated
        torch.testing.assert_close(gray.eval()(t), rgb.eval()(t.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_whose_bytes_do_not_match_the_hash_in_its_name(tmp_path, arch):
    path = fake_imagenet_file(tmp_path, arch)
    liar = path.with_name(f"{arch}-00000000.pth")
    path.rename(liar)
    with pytest.raises(WeightsError, match="does not start with 00000000"):
        init_model(f"imagenet:{liar}", 2, 1, arch=arch)


def test_checkpoint_of_another_network_does_not_fit(tmp_path):
    path = fake_imagenet_file(tmp_path, "resnet18")
    with pytest.raises(WeightsError, match="torchvision-format densenet121"):
        init_model(f"imagenet:{path}", 2, 1, arch="densenet121")


@pytest.mark.parametrize("arch", ARCHS)
def test_folded_and_unfolded_outputs_match(arch):
    model = spiced(build_network(2, 1, arch=arch))
    pairs = conv_bn_pairs(model)
    assert pairs and pairs[0][0] == get_arch(arch).stem  # the stem is found by tracing, not by name
    folded = fold_batchnorm(model)
    assert folded is not model
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == n_bn - len(pairs)
    x = torch.randn(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-3)
    assert head_of(folded) is folded.get_submodule(get_arch(arch).head)  # names kept: hooks still work


def test_fold_ensemble_members():
    model = spiced(build_model(2, 1, members=2, hflip=True, arch="densenet121"))
    folded = fold_batchnorm(model)
    assert folded is not model and len(folded.members) == 2
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
def test_set_trainable_head_is_the_registry_head(arch):
    model = build_network(2, 1, arch=arch).train()
    head = get_arch(arch).head
    set_trainable(model, "head")
    assert {k for k, p in model.named_parameters() if p.requires_grad} == {f"{head}.weight", f"{head}.bias"}
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
def test_bundle_round_trip_records_arch_and_retrains(tmp_path, arch):
    model, rec = init_model("none", 2, 1, seed=0, arch=arch)
    model = spiced(model)
    kwargs = dict(
        classes=["NORMAL", "PNEUMONIA"],
        positive_class="PNEUMONIA",
        transform_spec=TransformSpec(image_size=SIZE),
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash="m" * 64,
        init_record=rec,
    )
    path = save_bundle(tmp_path / "model.pt", model, **kwargs)
    raw = torch.load(path, weights_only=True)
    assert raw["arch"]["name"] == arch and raw["arch"]["impl"] == get_arch(arch).impl
    b = load_bundle(path)
    assert b.arch == arch and find_arch(b.model) is get_arch(arch)
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(b.model(x), model(x))
    child, crec = init_model(str(path), 2, 1, classes=["NORMAL", "PNEUMONIA"], arch=arch)
    assert crec["init"] == "bundle" and crec["head"] == "loaded"
    with pytest.raises(WeightsError, match=f"--arch {arch}"):
        init_model(str(path), 2, 1, arch="resnet18")
    with pytest.raises(BundleError, match="not the declared architecture 'resnet18'"):
        save_bundle(tmp_path / "wrong.pt", model, **kwargs, arch="resnet18")


def test_bundle_declaring_another_registered_arch_is_refused(tmp_path):
    model, _ = init_model("none", 2, 1, seed=0, arch="resnet18")
    path = save_bundle(
        tmp_path / "model.pt",
        model,
        classes=["A", "B"],
        positive_class="B",
        transform_spec=TransformSpec(image_size=SIZE),
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash="m" * 64,
    )
    d = torch.load(path, weights_only=True)
    d["arch"]["name"] = "resnet50"
    torch.save(d, path)
    with pytest.raises(BundleError, match="does not match the declared architecture resnet50"):
        load_bundle(path)


def test_every_entry_is_complete():
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name and spec.gray_stem == "sum" and len(spec.mean) == len(spec.std) == 3
        assert re.fullmatch(r"[0-9a-f]{8}", spec.weights_sha256_prefix)
