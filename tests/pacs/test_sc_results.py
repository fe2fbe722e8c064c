"""The Secondary Capture a radiologist reads (issue 23, defect 7): full-resolution untinted
film, the decision burned in, a Grad-CAM map on a fixed scale shown for positive calls only,
built in under 0.5 s per image; valid per dciodvfy, read back with highdicom."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cxr_cad.pacs.findings import Finding
from cxr_cad.pacs.sc import HEAT_SCALE, compose_sc, upsample_cam
from tests.factories.dicom import write_dicom
from tests.inference.test_predict import bundle_path  # noqa: F401 - session fixture

POS, NEG = [Finding("PNEUMONIA", 0.91, 0.5, True)], [Finding("PNEUMONIA", 0.02, 0.5, False)]


def _film(h: int = 300, w: int = 240) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((np.sin(x / 17.0) + np.cos(y / 23.0)) / 4 + 0.5).astype(np.float32)


def test_negative_call_shows_the_untinted_film_and_no_map():
    film = _film()
    cam = np.full((2, 2), 3 * HEAT_SCALE, np.float32)  # strong map: must still not be shown
    pic = compose_sc(film, NEG, cam)
    h, w = film.shape
    assert pic.shape[0] > h and pic.shape[1] > w  # banner below, colour bar on the right
    area = pic[:h, :w].astype(int)
    assert (area[..., 0] == area[..., 1]).all() and (area[..., 1] == area[..., 2]).all()  # gray: no tint
    assert np.abs(area[..., 0] - np.round(film * 255)).max() <= 1  # the film itself, full size
    banner = pic[h:].astype(int)
    assert ((banner[..., 0] > 200) & (banner[..., 1] < 80)).any()  # the red "NOT FOR DIAGNOSTIC USE"


def test_positive_call_colours_on_a_fixed_scale_and_zero_evidence_leaves_the_film():
    film = np.full((200, 200), 0.5, np.float32)
    cam = np.zeros((2, 2), np.float32)
    cam[0, 0] = HEAT_SCALE  # top of the scale in one corner, no evidence elsewhere
    pic = compose_sc(film, POS, cam).astype(int)
    assert (pic[150:200, 150:200, 0] == pic[150:200, 150:200, 2]).all()  # no evidence: untouched gray
    assert pic[0, 0, 0] > pic[0, 0, 2] + 40  # top of the scale: red
    # the same value means the same colour in another image (no per-image scaling)
    other = np.zeros((2, 2), np.float32)
    other[0, 0], other[1, 1] = HEAT_SCALE, HEAT_SCALE / 4
    pic2 = compose_sc(film, POS, other).astype(int)
    assert (pic2[0, 0] == pic[0, 0]).all()
    half = compose_sc(film, POS, cam / 2).astype(int)
    assert not (half[0, 0] == pic[0, 0]).all()  # half the evidence: another colour


def test_upsample_cam_maps_the_padded_square_back_onto_the_film():
    cam = np.zeros((4, 4), np.float32)
    cam[:, 0] = 1.0  # left column of the padded square
    wide = upsample_cam(cam, (50, 100), aspect="pad")  # a landscape film: padded top and bottom
    assert wide.shape == (50, 100) and wide[:, 0].mean() > 0.5 and wide[:, -1].max() < 0.05
    assert upsample_cam(cam, (30, 60)).shape == (30, 60)


def test_logodds_map_is_on_an_absolute_scale(bundle_path, tmp_path):  # noqa: F811
    import copy

    import torch

    from cxr_cad.explain.gradcam import GradcamSource, logodds_maps
    from cxr_cad.model import load_bundle
    from tests.inference.test_predict import cohort_pixels

    img = cohort_pixels(1, seed=5)[0][0]
    path = write_dicom(tmp_path / "x.dcm", img.astype(np.uint16) * 16, bits_stored=12)
    bundle = load_bundle(bundle_path)
    (a,) = logodds_maps(GradcamSource.from_bundle(bundle), [str(path)])
    strong = copy.deepcopy(bundle.model)
    with torch.no_grad():
        strong.fc.weight.mul_(2)
        strong.fc.bias.mul_(2)
    (b,) = logodds_maps(GradcamSource(strong, bundle.transform_spec, bundle.positive_index), [str(path)])
    assert b.logodds == pytest.approx(2 * a.logodds, rel=1e-4)
    assert b.cam == pytest.approx(2 * a.cam, rel=1e-4, abs=1e-6)  # twice the evidence, twice the value
    assert a.cam.shape == (2, 2)  # the feature stage's resolution: no upsampling here


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_full_resolution_sc_in_under_half_a_second_valid_and_readable(bundle_path, tmp_path):  # noqa: F811
    import torch

    from cxr_cad.pacs.output import DicomOutOptions, DicomOutput

    threads = torch.get_num_threads()
    rng = np.random.default_rng(1)
    film = (np.clip(_film(2048, 2048) + rng.normal(0, 0.02, (2048, 2048)), 0, 1) * 4095).astype(np.uint16)
    paths = [write_dicom(tmp_path / f"big{k}.dcm", film, bits_stored=12) for k in range(4)]
    writer = DicomOutput(DicomOutOptions(tmp_path / "out", secondary_capture=True), bundle_path)
    wall, cpu = [], []
    torch.set_num_threads(1)  # CPU time of one thread = the work, whatever else the machine runs
    try:
        for k, path in enumerate(paths):
            sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            row = {"sop_instance_uid": sop, "probability": "0.9", "decision": "PNEUMONIA", "threshold": "0.5"}
            t0, c0 = time.perf_counter(), time.process_time()
            rec, _ = writer._one(row, str(path), k + 1, None)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    finally:
        torch.set_num_threads(threads)
    per_image = float(np.median(cpu[1:]))  # the first one loads MONAI's transforms
    print(
        f"SR + full-resolution SC of a 2048x2048 film: {per_image:.3f} s CPU, "
        f"{float(np.median(wall[1:])):.3f} s wall per image (median of 3, one thread)"
    )
    assert per_image < 0.5
    sc_path = tmp_path / "out" / rec["sc_file"]
    assert _errors(sc_path) == []
    sc = hd.imread(sc_path)  # highdicom reads it back as an image
    assert sc.Rows > 2048 and sc.Columns > 2048 and sc.BurnedInAnnotation == "YES"
    assert f"0-{HEAT_SCALE:g} log-odds" in sc.ImageComments
    assert rec["heat_scale"] == f"{HEAT_SCALE:g}"


def _errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
