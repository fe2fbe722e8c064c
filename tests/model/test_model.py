"""cxr_cad.model: ResNet18 (torchvision names), initial weights, conv1 adaptation, fine-tuning.

The other registered networks: tests/model/test_registry.py."""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cxr_cad.model.imagenet as weights_mod
from cxr_cad.errors import ConfigError, WeightsError
from cxr_cad.model import build_resnet18, get_arch, init_model, load_imagenet_weights, set_trainable

# torchvision.models.resnet18().state_dict().keys(), in order (torchvision is not imported).
TORCHVISION_RESNET18_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight",
    "layer1.0.bn2.bias",
    "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var",
    "layer1.0.bn2.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn1.weight",
    "layer1.1.bn1.bias",
    "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var",
    "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer1.1.bn2.weight",
    "layer1.1.bn2.bias",
    "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var",
    "layer1.1.bn2.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn1.weight",
    "layer2.0.bn1.bias",
    "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var",
    "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.bn2.weight",
    "layer2.0.bn2.bias",
    "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var",
    "layer2.0.bn2.num_batches_tracked",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight",
    "layer2.0.downsample.1.bias",
    "layer2.0.downsample.1.running_mean",
    "layer2.0.downsample.1.running_var",
    "layer2.0.downsample.1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn1.weight",
    "layer2.1.bn1.bias",
    "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var",
    "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer2.1.bn2.weight",
    "layer2.1.bn2.bias",
    "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var",
    "layer2.1.bn2.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn1.weight",
    "layer3.0.bn1.bias",
    "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var",
    "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.bn2.weight",
    "layer3.0.bn2.bias",
    "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var",
    "layer3.0.bn2.num_batches_tracked",
    "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.weight",
    "layer3.0.downsample.1.bias",
    "layer3.0.downsample.1.running_mean",
    "layer3.0.downsample.1.running_var",
    "layer3.0.downsample.1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn1.weight",
    "layer3.1.bn1.bias",
    "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer3.1.bn2.weight",
    "layer3.1.bn2.bias",
    "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var",
    "layer3.1.bn2.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.bn2.weight",
    "layer4.0.bn2.bias",
    "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var",
    "layer4.0.bn2.num_batches_tracked",
    "layer4.0.downsample.0.weight",
    "layer4.0.downsample.1.weight",
    "layer4.0.downsample.1.bias",
    "layer4.0.downsample.1.running_mean",
    "layer4.0.downsample.1.running_var",
    "layer4.0.downsample.1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn1.weight",
    "layer4.1.bn1.bias",
    "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
    "fc.weight",
    "fc.bias",
]


def torchvision_shapes(num_classes: int = 1000, in_channels: int = 3) -> dict[str, tuple]:
    """Shapes of torchvision's resnet18 parameters, from its definition (BasicBlock, [2, 2, 2, 2])."""
    shapes = {"conv1.weight": (64, in_channels, 7, 7), "fc.weight": (num_classes, 512), "fc.bias": (num_classes,)}

    def bn(prefix, n):
        shapes.update({f"{prefix}.{p}": (n,) for p in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    for layer in range(1, 5):
        planes = 64 * 2 ** (layer - 1)
        for block in range(2):
            p = f"layer{layer}.{block}"
            inplanes = planes // 2 if (layer > 1 and block == 0) else planes
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn1", planes)
            bn(f"{p}.bn2", planes)
            if layer > 1 and block == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes)
    return shapes


def random_torchvision_state(seed: int = 0, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A random RGB state dict in torchvision's format (BN statistics made non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k in TORCHVISION_RESNET18_KEYS:
        shape = torchvision_shapes(num_classes)[k]
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(100, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("bn1.weight", "bn2.weight", "downsample.1.weight")):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            state[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5 * (0.1 if len(shape) == 1 else 1)
    return state


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet18 forward (eval mode) written out with torch.nn.functional."""

    def bn(t, p):
        return F.batch_norm(
            t,
            sd[f"{p}.running_mean"],
            sd[f"{p}.running_var"],
            sd[f"{p}.weight"],
            sd[f"{p}.bias"],
            training=False,
            eps=1e-5,
        )

    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            stride = 2 if (layer > 1 and block == 0) else 1
            out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=1, padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = F.relu(out + x)
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tv_file(tmp_path) -> Path:
    """A torchvision-format RGB resnet18 checkpoint written with torch.save (no hash in its name)."""
    path = tmp_path / "rgb_resnet18.pth"
    torch.save(random_torchvision_state(1), path)
    return path


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub cache; no env override, not offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(weights_mod.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(weights_mod.ENV_OFFLINE, raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


# ---------------------------------------------------------------- architecture


def test_parameter_names_and_shapes_equal_torchvision():
    assert len(TORCHVISION_RESNET18_KEYS) == 122
    sd = build_resnet18(1000, 3).state_dict()
    assert list(sd) == TORCHVISION_RESNET18_KEYS
    expected = torchvision_shapes(1000, 3)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    gray = build_resnet18(2, 1).state_dict()
    assert list(gray) == TORCHVISION_RESNET18_KEYS
    assert tuple(gray["conv1.weight"].shape) == (64, 1, 7, 7) and tuple(gray["fc.weight"].shape) == (2, 512)


def test_forward_equals_torchvision_definition():
    state = random_torchvision_state(0, num_classes=5)
    model = build_resnet18(5, 3)
    model.load_state_dict(state)
    model.eval()
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(state, x), atol=1e-4, rtol=1e-4)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="num_classes"):
        build_resnet18(1)
    with pytest.raises(ConfigError, match="in_channels"):
        build_resnet18(2, in_channels=2)


def test_seeded_resnet18_is_monai_resnet18_under_the_seed():
    """init_model("none") draws exactly what MONAI's resnet18 draws after manual_seed(seed): the
    registry changed nothing in the default network's random initialisation."""
    from monai.networks.nets import resnet18

    model, _ = init_model("none", 2, 1, seed=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        ref = resnet18(
            spatial_dims=2, n_input_channels=1, num_classes=2, bias_downsample=False, conv1_t_stride=2, pretrained=False
        )
    a, b = model.state_dict(), ref.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- weights files and conv1


def test_gray_conv1_sum_matches_rgb_model_on_replicated_image(tv_file):
    gray, rec = init_model(f"imagenet:{tv_file}", 2, 1, seed=0)
    rgb, _ = init_model(f"imagenet:{tv_file}", 2, 3, seed=0)
    assert rec["init"] == "imagenet" and rec["conv1"] == "summed over RGB" and rec["head"] == "reinitialised"
    assert rec["sha256"] == hashlib.sha256(tv_file.read_bytes()).hexdigest() and not rec["verified_imagenet"]
    rgb.fc.load_state_dict(gray.fc.state_dict())
    gray.eval()
    rgb.eval()
    t = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(gray(t), rgb(t.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)
        # and the RGB model is exactly torchvision's on the file's weights (head aside)
        ref = {**torch.load(tv_file, weights_only=True), "fc.weight": rgb.fc.weight, "fc.bias": rgb.fc.bias}
        torch.testing.assert_close(
            rgb(t.repeat(1, 3, 1, 1)), reference_forward(ref, t.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4
        )
    sd = torch.load(tv_file, weights_only=True)
    torch.testing.assert_close(gray.conv1.weight.detach(), sd["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(gray.layer3[1].bn2.running_var, sd["layer3.1.bn2.running_var"])


def test_fc_reinitialised_and_seeded(tv_file):
    a, _ = init_model(f"imagenet:{tv_file}", 3, 1, seed=7)
    b, _ = init_model(f"imagenet:{tv_file}", 3, 1, seed=7)
    c, _ = init_model(f"imagenet:{tv_file}", 3, 1, seed=8)
    assert tuple(a.fc.weight.shape) == (3, 512)
    assert torch.equal(a.fc.weight, b.fc.weight) and not torch.equal(a.fc.weight, c.fc.weight)
    assert torch.equal(a.layer1[0].conv1.weight, c.layer1[0].conv1.weight)


def test_none_init_is_seeded_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a, rec = init_model("none", 2, 1, seed=1)
    assert torch.equal(torch.get_rng_state(), before) and rec == {"init": "none", "seed": 1}
    b, _ = init_model("none", 2, 1, seed=1)
    c, _ = init_model("none", 2, 1, seed=2)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_weights_file_that_does_not_fit(tmp_path):
    state = random_torchvision_state(0)
    del state["layer4.1.bn2.bias"]
    state["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError) as err:
        init_model(f"imagenet:{bad}", 2, 1)
    msg = str(err.value)
    assert "layer4.1.bn2.bias" in msg and "extra.weight" in msg and "layer2.0.conv1.weight" in msg
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="junk.pth"):
        init_model(f"imagenet:{junk}", 2, 1)
    with pytest.raises(WeightsError, match="does not exist"):
        init_model(f"imagenet:{tmp_path / 'missing.pth'}", 2, 1)
    with pytest.raises(ConfigError, match="not 'imagenet'"):  # a typo in --init: exit 2
        init_model(str(tmp_path / "nowhere.pt"), 2, 1)


def test_wrapped_checkpoint_prefixes_are_accepted(tmp_path):
    state = {f"module.{k}": v for k, v in random_torchvision_state(2).items()}
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": state}, path)
    model, rec = init_model(str(path), 2, 1)
    assert rec["init"] == "weights_file" and rec["conv1"] == "summed over RGB"


# ---------------------------------------------------------------- ImageNet: cache, download, env, hashes


def test_offline_without_local_file_says_how_to_pass_one(hub_dir, monkeypatch):
    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError) as err:
        init_model("imagenet", 2, 1)
    msg = str(err.value)
    assert "imagenet:/path/to/resnet18-f37072fd.pth" in msg and weights_mod.ENV_WEIGHTS in msg
    assert "no route to host" in msg and weights_mod.IMAGENET_URL in msg
    assert not hub_dir.exists() or not any(hub_dir.iterdir())  # nothing half-written left
    monkeypatch.setenv(weights_mod.ENV_OFFLINE, "1")
    with pytest.raises(WeightsError, match="CXR_CAD_OFFLINE"):
        init_model("imagenet", 2, 1)


def test_download_with_wrong_hash_is_refused(hub_dir, monkeypatch):
    def bad_download(url, dst, *args, **kwargs):
        Path(dst).write_bytes(b"<html>captive portal</html>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", bad_download)
    with pytest.raises(WeightsError, match="does not start with f37072fd"):
        init_model("imagenet", 2, 1)
    assert not any(hub_dir.iterdir())


def test_download_into_hub_cache_then_reuse(hub_dir, monkeypatch, tv_file):
    prefix = hashlib.sha256(tv_file.read_bytes()).hexdigest()[:8]
    spec = dataclasses.replace(
        get_arch("resnet18"),
        weights_url=f"https://example.invalid/resnet18-{prefix}.pth",
        weights_sha256_prefix=prefix,
    )
    monkeypatch.setattr(weights_mod, "get_arch", lambda name: spec)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        Path(dst).write_bytes(tv_file.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    _, rec = init_model("imagenet", 2, 1)
    assert calls == [spec.weights_url] and (hub_dir / f"resnet18-{prefix}.pth").is_file()
    assert rec["verified_imagenet"] and rec["source"] == str(hub_dir / f"resnet18-{prefix}.pth")
    init_model("imagenet", 2, 1)
    assert len(calls) == 1  # second time from the cache


def test_cached_file_with_wrong_hash_and_env_override(hub_dir, monkeypatch, tv_file):
    hub_dir.mkdir(parents=True)
    (hub_dir / "resnet18-f37072fd.pth").write_bytes(tv_file.read_bytes())  # name says f37072fd, bytes do not
    with pytest.raises(WeightsError, match="SHA-256 .* does not start with f37072fd"):
        init_model("imagenet", 2, 1)
    monkeypatch.setenv(weights_mod.ENV_WEIGHTS, str(tv_file))
    _, rec = init_model("imagenet", 2, 1)
    assert rec["source"] == str(tv_file)
    monkeypatch.setenv(weights_mod.ENV_WEIGHTS, str(tv_file.parent / "missing.pth"))
    with pytest.raises(WeightsError, match=weights_mod.ENV_WEIGHTS):
        init_model("imagenet", 2, 1)


def test_load_imagenet_weights_into_existing_model(tv_file):
    model = build_resnet18(2, 1)
    fc_before = model.fc.weight.detach().clone()
    rec = load_imagenet_weights(model, tv_file, progress=False)
    assert rec["loaded_keys"] == 120 and torch.equal(model.fc.weight, fc_before)


# ---------------------------------------------------------------- fine-tuning switches


def test_set_trainable_head_and_all():
    model = build_resnet18(2, 1)
    model.train()
    n = set_trainable(model, "head")
    assert n == 512 * 2 + 2
    assert {k for k, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert not model.bn1.training and not model.layer4[1].bn2.training
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    assert torch.equal(model.bn1.running_mean, before) and model.conv1.weight.grad is None
    n_all = set_trainable(model, "all")
    assert n_all == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="trainable mode"):
        set_trainable(model, "frozen")


def test_unwrap_model_sees_through_compile_and_data_parallel():
    """torch.compile's wrapper has no public accessor; unwrap_model's one private read is checked here."""
    from cxr_cad.model import unwrap_model

    model = build_resnet18(2, 1)
    assert unwrap_model(torch.compile(model)) is model  # compiles lazily: nothing is compiled here
    assert unwrap_model(torch.nn.DataParallel(model)) is model
    assert set_trainable(torch.compile(model), "head") == 512 * 2 + 2
