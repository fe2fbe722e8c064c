"""cxr_cad.io.decoders: permissively licensed default decoders, JPEG Extended 12-bit vs dcmtk.

The transfer-syntax matrix uses tests/factories/dicom.py; the 12-bit JPEG Extended files are made
here with dcmtk's ``dcmcjpeg`` from a CC BY 4.0 radiograph shipped with the package (Kermany et
al., cxr_cad/data/ATTRIBUTION.md) and compared with dcmtk's ``dcmdjpeg`` (skipped without dcmtk),
plus the two 12-bit files inside the installed pydicom wheel.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tomllib
from PIL import Image
from pydicom.uid import JPEG2000, UID, JPEGExtended12Bit, JPEGLosslessSV1

from cxr_cad.errors import Reason, RejectedFile
from cxr_cad.io import AcceptPolicy, decoders, read_image
from tests.factories.dicom import SYNTAXES, chest_phantom, write_dicom

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "cxr_cad" / "data" / "kermany_sample" / "images" / "IM-0125-0001.jpg"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: The 12-bit JPEG Extended files shipped inside the pydicom wheel (never downloaded).
PYDICOM_EXTENDED_12 = [p for p in (PYDICOM_FILES / "JPEG-lossy.dcm", PYDICOM_FILES / "JPGExtended.dcm") if p.is_file()]
DCMTK = shutil.which("dcmcjpeg") and shutil.which("dcmdjpeg")
needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="dcmtk (dcmcjpeg/dcmdjpeg) not installed: apt-get install dcmtk")
#: Packages that provide the default plugins (pydicom's plugin names map onto them).
DEFAULT_DECODER_PACKAGES = (
    "pydicom",
    "pillow",
    "imagecodecs",
    "pyjpegls",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
)
COMPRESSED = [name for name, uid in SYNTAXES.items() if UID(uid).is_compressed]
LOSSLESS_COMPRESSED = ("rle", "jpegls", "j2k", "jpeg_lossless", "jpeg_lossless_p7")


def _licence(package: str) -> str:
    meta = importlib.metadata.metadata(package)
    fields = [meta.get("License-Expression") or "", meta.get("License") or ""]
    fields += [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return " | ".join(f for f in fields if f)


def _decode(path: Path) -> tuple[np.ndarray, str]:
    ds = pydicom.dcmread(path)
    return decoders.decode_array(ds, ds.file_meta.TransferSyntaxUID)


def _dcmtk(*args: str) -> None:
    run = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, (args, run.stderr)


def _radiograph_12bit(size: tuple[int, int] = (192, 160)) -> np.ndarray:
    """A real chest radiograph (CC BY 4.0, shipped) as 12-bit stored values."""
    img = Image.open(SAMPLE).convert("L").resize(size[::-1], Image.BILINEAR)
    return np.rint(np.asarray(img, dtype=np.float64) / 255.0 * 4095).astype(np.uint16)


def _extended_12bit(tmp_path: Path, name: str, *, old_encoder_sos: bool = False) -> Path:
    """dcmcjpeg +ee (JPEG Extended, 12-bit) of the radiograph; optionally with Se = 0 in its SOS."""
    native = write_dicom(tmp_path / f"{name}_native.dcm", _radiograph_12bit(), bits_stored=12)
    out = tmp_path / f"{name}.dcm"
    _dcmtk("dcmcjpeg", "+ee", str(native), str(out))
    if old_encoder_sos:  # what old encoders wrote: Ss=0, Se=0 in a sequential scan (libjpeg refuses it)
        data = bytearray(out.read_bytes())
        sos = data.find(b"\xff\xda\x00\x08\x01")
        assert sos > 0 and data[sos + 7 : sos + 9] == b"\x00\x3f"  # Ss, Se
        data[sos + 8] = 0
        out.write_bytes(bytes(data))
    return out


def _dcmdjpeg(path: Path, tmp_path: Path) -> np.ndarray:
    out = tmp_path / (path.stem + "_dcmdjpeg.dcm")
    _dcmtk("dcmdjpeg", str(path), str(out))
    return pydicom.dcmread(out).pixel_array


# ---------------------------------------------------------------- licences and dependency lists


def test_default_decoder_packages_are_permissively_licensed():
    for package in DEFAULT_DECODER_PACKAGES:
        licence = _licence(package)
        assert licence and "GPL" not in licence.upper(), (package, licence)


def test_gpl_decoder_is_an_optional_extra_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in reqs}  # noqa: E731
    assert "pylibjpeg-libjpeg" not in names(project["dependencies"])
    assert "pylibjpeg-libjpeg" not in names(project["optional-dependencies"]["dev"])
    assert names(project["optional-dependencies"][decoders.GPL_EXTRA]) == {"pylibjpeg-libjpeg"}
    assert {"imagecodecs", "pillow", "pyjpegls", "pylibjpeg-openjpeg", "pylibjpeg-rle"} <= names(
        project["dependencies"]
    )


def test_min_constraints_pin_exactly_the_pyproject_floors():
    """constraints/min.txt (the floor CI job) installs each dependency at pyproject.toml's floor."""
    floors = {}
    for req in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, _, rest = req.partition(">=")
        floors[name.strip().lower()] = rest.split(",")[0].strip()
    pins = [
        line.split("==")
        for line in (ROOT / "constraints" / "min.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(pins) >= 10
    for name, version in pins:
        assert floors.get(name.strip().lower()) == version.strip(), (name, version, floors.get(name.lower()))


def test_plugin_order_puts_the_gpl_decoder_last_and_only_where_it_is_libjpeg():
    for ts, permissive in decoders.PERMISSIVE.items():
        order = decoders.plugin_order(ts)
        assert order[: len(permissive)] == permissive
        assert not any(decoders.is_gpl(ts, p) for p in permissive)
    assert decoders.plugin_order(JPEGLosslessSV1)[-1] == "pylibjpeg" and decoders.is_gpl(JPEGLosslessSV1, "pylibjpeg")
    assert not decoders.is_gpl(JPEG2000, "pylibjpeg")  # pylibjpeg-openjpeg (MIT)
    assert decoders.plugin_order(JPEGExtended12Bit, 12)[0] == "libjpeg-turbo"


# ---------------------------------------------------------------- the transfer-syntax matrix


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("syntax", COMPRESSED)
def test_every_compressed_syntax_decodes_with_a_permissive_plugin(tmp_path, syntax, bits):
    if syntax == "jpeg_baseline" and bits != 8:
        pytest.skip("JPEG baseline is 8-bit only")
    stored = chest_phantom((96, 80), bits_stored=bits)
    path = write_dicom(tmp_path / "m.dcm", stored, bits_stored=bits, transfer_syntax=syntax)
    arr, plugin = _decode(path)
    ts = UID(SYNTAXES[syntax])
    assert plugin in decoders.PERMISSIVE[ts] and not decoders.is_gpl(ts, plugin)
    if syntax in LOSSLESS_COMPRESSED:
        np.testing.assert_array_equal(arr, stored)
    else:
        assert np.abs(arr.astype(np.int64) - stored).mean() < 0.03 * 2**bits  # lossy: close, not equal


@pytest.mark.parametrize("bits", [2, 5, 8, 10, 15, 16])
@pytest.mark.parametrize("syntax", ["jpeg_lossless", "jpeg_lossless_p7"])
def test_jpeg_lossless_any_precision_is_exact(tmp_path, syntax, bits):
    """Random values exercise every difference category, 2-16 bits (GDCM aborted below 8 bits)."""
    stored = np.random.default_rng(bits).integers(0, 2**bits, (40, 56)).astype(np.uint16 if bits > 8 else np.uint8)
    arr, plugin = _decode(write_dicom(tmp_path / "l.dcm", stored, bits_stored=bits, transfer_syntax=syntax))
    assert plugin == "libjpeg-turbo"
    np.testing.assert_array_equal(arr, stored)


# ---------------------------------------------------------------- JPEG Extended 12-bit


@pytest.mark.parametrize("path", PYDICOM_EXTENDED_12, ids=lambda p: p.name)
def test_pydicom_12bit_extended_files_decode(path):
    arr, plugin = _decode(path)
    assert plugin == "libjpeg-turbo" and arr.dtype == np.uint16 and arr.shape == (1024, 256)
    assert 0 < int(arr.max()) < 4096
    pixels, meta = read_image(path, policy=AcceptPolicy(modalities=()))
    assert meta["transfer_syntax"] == JPEGExtended12Bit and 0.0 <= pixels.min() < pixels.max() <= 1.0


@needs_dcmtk
@pytest.mark.parametrize("path", PYDICOM_EXTENDED_12, ids=lambda p: p.name)
def test_pydicom_12bit_extended_files_match_dcmdjpeg(tmp_path, path):
    arr, _ = _decode(path)
    np.testing.assert_array_equal(arr, _dcmdjpeg(path, tmp_path))


@needs_dcmtk
@pytest.mark.parametrize("old_encoder_sos", [False, True], ids=["dcmcjpeg", "old_encoder_sos"])
def test_dcmtk_12bit_extended_matches_dcmdjpeg(tmp_path, old_encoder_sos):
    path = _extended_12bit(tmp_path, "x", old_encoder_sos=old_encoder_sos)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGExtended12Bit
    arr, plugin = _decode(path)
    assert plugin == "libjpeg-turbo"
    np.testing.assert_array_equal(arr, _dcmdjpeg(path, tmp_path))
    lossy_error = np.abs(arr.astype(np.int64) - _radiograph_12bit()).mean()
    assert lossy_error < 8  # of 4095: a faithful lossy copy, not noise
    pixels, _ = read_image(path)
    native, _ = read_image(tmp_path / "x_native.dcm")
    assert np.abs(pixels - native).max() < 0.03


# ---------------------------------------------------------------- failures


def test_corrupt_jpeg_is_decode_failed_and_names_the_gpl_extra(tmp_path):
    path = write_dicom(tmp_path / "c.dcm", chest_phantom(64), bits_stored=12, transfer_syntax="jpeg_lossless")
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc3")
    data[sof + 4] = 1  # sample precision 1: no JPEG decoder accepts it
    path.write_bytes(bytes(data))
    with pytest.raises(RejectedFile) as info:
        read_image(path)
    assert info.value.reason == Reason.DECODE_FAILED
    assert "libjpeg-turbo" in info.value.detail
    gpl_installed = "pylibjpeg" in decoders.usable_plugins(JPEGLosslessSV1)
    # without the extra the hint names it; with it, libjpeg was tried too and says why it failed
    assert (
        ("pylibjpeg: " in info.value.detail)
        if gpl_installed
        else (f"cxr_cad[{decoders.GPL_EXTRA}]" in info.value.detail)
    )


def test_missing_decoder_says_to_reinstall(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "n.dcm", chest_phantom(64), bits_stored=12, transfer_syntax="jpeg_lossless")
    monkeypatch.setattr(decoders, "plugin_order", lambda ts, bits_stored=8: ("not-installed",))
    with pytest.raises(RejectedFile) as info:
        read_image(path)
    assert info.value.reason == Reason.DECODE_FAILED and "reinstall cxr_cad" in info.value.detail


_FUZZ = r"""
import sys, warnings
import numpy as np
from pathlib import Path
from cxr_cad.errors import RejectedFile
from cxr_cad.io import read_image
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
for seed in sys.argv[1:]:
    data = Path(seed).read_bytes()
    start = data.find(b"\xff\xd8")
    for i in range(150):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            mutated[int(rng.integers(start, len(data)))] = int(rng.integers(0, 256))
        out = Path(seed).with_suffix(".m.dcm")
        out.write_bytes(bytes(mutated))
        try:
            read_image(out)
        except RejectedFile:
            pass
print("survived")
"""


def test_mutated_jpeg_codestreams_never_crash_the_process(tmp_path):
    """Byte-mutated JPEG lossless / extended codestreams: rejected or decoded, never a SIGSEGV/abort.

    Runs in a child process so a native crash fails this test instead of ending the run
    (python-gdcm crashed within 100 such mutations and was dropped for this reason).
    """
    seeds = [
        write_dicom(tmp_path / "l.dcm", chest_phantom(48), bits_stored=12, transfer_syntax="jpeg_lossless"),
        write_dicom(
            tmp_path / "b.dcm", chest_phantom(48, bits_stored=8), bits_stored=8, transfer_syntax="jpeg_baseline"
        ),
    ] + PYDICOM_EXTENDED_12[:1]
    run = subprocess.run(
        [sys.executable, "-c", _FUZZ, *map(str, seeds)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert run.returncode == 0 and "survived" in run.stdout, (run.returncode, run.stderr[-2000:])
