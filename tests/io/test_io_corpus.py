"""Every file of pydicom's bundled test corpus: accepted or RejectedFile, never another exception.

Only files present in the installed pydicom package are used (never downloaded).
The second policy accepts any modality so the decode path runs on CT/MR images too.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom.data
import pytest

from cxr_cad.errors import Reason, RejectedFile
from cxr_cad.io import META_KEYS, AcceptPolicy, read_header, read_image

CORPUS = Path(pydicom.data.__file__).parent / "test_files"
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".py")
POLICIES = {"default": AcceptPolicy(), "any": AcceptPolicy(modalities=(), reject_lateral=False)}
#: Reasons read_image may add to a file whose header was accepted.
# IMAGE_TOO_LARGE: a compressed frame whose own codestream header declares more pixels than the
# limit is refused before the decoder allocates them (cxr_cad.io.codestream).
DECODE_REASONS = {
    Reason.DECODE_FAILED,
    Reason.CONSTANT_IMAGE,
    Reason.UNREADABLE,
    Reason.MULTI_FRAME,
    Reason.IMAGE_TOO_LARGE,
}


def _outcome(fn, path, policy):
    with warnings.catch_warnings(record=True):  # pydicom warns about the deliberately odd files of its corpus
        try:
            return fn(path, policy=policy), None
        except RejectedFile as exc:
            assert exc.detail and exc.path == str(path)
            return None, exc.reason


def test_corpus_is_present():
    assert len(FILES) > 50, f"pydicom test corpus not found under {CORPUS}"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_corpus_file(path, policy_name):
    policy = POLICIES[policy_name]
    header, header_reason = _outcome(read_header, path, policy)
    result, image_reason = _outcome(read_image, path, policy)
    if header_reason is not None:
        assert image_reason == header_reason
        return
    assert tuple(header) == META_KEYS
    if image_reason is not None:
        assert image_reason in DECODE_REASONS
        return
    pixels, meta = result
    assert meta == header
    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert pixels.shape == (meta["rows"], meta["columns"])
    assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1 and pixels.min() < pixels.max()


def _read(name, **kwargs):
    with warnings.catch_warnings(record=True):
        return read_image(CORPUS / name, policy=POLICIES["any"], **kwargs)[0]


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_same_real_image_in_other_encodings_is_identical(name):
    if not (CORPUS / name).exists():
        pytest.skip(f"{name} not in this pydicom version")
    np.testing.assert_array_equal(_read(name), _read("MR_small.dcm"))


def test_known_corpus_outcomes():
    expected = {
        "CT_small.dcm": Reason.UNSUPPORTED_MODALITY,
        "test-SR.dcm": Reason.NOT_AN_IMAGE_SOP_CLASS,
        "rtplan.dcm": Reason.NOT_AN_IMAGE_SOP_CLASS,
        "rtdose_1frame.dcm": Reason.NOT_AN_IMAGE_SOP_CLASS,
        "examples_palette.dcm": Reason.UNSUPPORTED_MODALITY,
        "MR_truncated.dcm": Reason.UNSUPPORTED_MODALITY,
        "crayons.icc": Reason.NOT_DICOM,
        "zipMR.gz": Reason.NOT_DICOM,
    }
    for name, reason in expected.items():
        assert _outcome(read_image, CORPUS / name, AcceptPolicy())[1] == reason, name
    assert _outcome(read_image, CORPUS / "examples_palette.dcm", POLICIES["any"])[1] == Reason.UNSUPPORTED_PHOTOMETRIC
    assert _outcome(read_image, CORPUS / "MR_truncated.dcm", POLICIES["any"])[1] == Reason.DECODE_FAILED
    # bare data sets (no preamble / File Meta) are parsed, little and big endian
    for name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"):
        assert _outcome(read_header, CORPUS / name, POLICIES["any"])[1] == Reason.NOT_AN_IMAGE_SOP_CLASS, name


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big_endian", "deflated", "rle", "j2k", "jpegls"])
def test_mutated_files_are_accepted_or_rejected(tmp_path, syntax):
    """Random byte corruption (mostly in the header) never escapes as another exception."""
    from tests.factories.dicom import chest_phantom, write_dicom

    source = write_dicom(
        tmp_path / "src.dcm", chest_phantom(32), transfer_syntax=syntax, window=(2000.0, 3000.0), rescale=(1.0, 0.0)
    )
    data = source.read_bytes()
    rng = np.random.default_rng(sum(map(ord, syntax)))
    outcomes = set()
    for _ in range(60):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            limit = min(len(mutated), 700) if rng.random() < 0.8 else len(mutated)
            mutated[int(rng.integers(0, limit))] = int(rng.integers(0, 256))
        path = tmp_path / "m.dcm"
        path.write_bytes(bytes(mutated))
        for fn in (read_header, read_image):
            outcomes.add(_outcome(fn, path, POLICIES["any"])[1])
    assert None in outcomes and len(outcomes) > 1  # some survive, some are rejected
