"""Makers of hostile inputs: corrupt bundles, decompression bombs, YAML bombs, FIFOs.

Each maker writes one small file (or FIFO) and returns its path. They are used by the
``tests/hostile`` suite and by ``tests/hostile/measure.py`` (the before/after table).
Nothing here needs ``../shared`` or a network.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["NORMAL", "PNEUMONIA"]


def write_bundle(path: Path, *, image_size: int = 64, seed: int = 0) -> Path:
    """A valid (randomly initialised) two-class bundle with a small input size."""
    import torch

    from cxr_cad.config.transforms import TransformSpec
    from cxr_cad.model import build_resnet18
    from cxr_cad.model.bundle import save_bundle

    torch.manual_seed(seed)
    model = build_resnet18(2, 1)
    return save_bundle(
        path,
        model,
        classes=CLASSES,
        positive_class="PNEUMONIA",
        transform_spec=TransformSpec(image_size=image_size),
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash="hostile",
    )


def flip_head_exponents(src: Path, dst: Path) -> Path:
    """Copy ``src`` and flip one exponent bit of every float of the 2x512 head weight, in place.

    The file size and zip layout stay the same; only the zip entry's CRC no longer matches
    (``torch.load`` does not check it)."""
    data = bytearray(Path(src).read_bytes())
    with zipfile.ZipFile(src) as zf:
        infos = [i for i in zf.infolist() if "/data/" in i.filename and i.file_size == 2 * 512 * 4]
    if len(infos) != 1:
        raise AssertionError(f"expected one 4096-byte tensor entry (fc.weight), found {len(infos)}")
    info = infos[0]
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    for k in range(start + 3, start + info.file_size, 4):  # little-endian: byte 3 holds the exponent MSBs
        data[k] ^= 0x40
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def rewrite_bundle(src: Path, dst: Path, edit) -> Path:
    """Load ``src`` as plain data, apply ``edit(payload)`` and save it to ``dst`` with torch.save."""
    import torch

    payload = torch.load(src, map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, dst)
    return Path(dst)


def nan_bundle(src: Path, dst: Path) -> Path:
    """A bundle whose head weight holds a NaN (and no digest, as an old bundle would)."""

    def edit(p):
        p["state_dict"]["fc.weight"][0, 0] = float("nan")
        p.pop("weights_sha256", None)

    return rewrite_bundle(src, dst, edit)


def huge_image_size_bundle(src: Path, dst: Path, size: int = 8192) -> Path:
    def edit(p):
        p["transform_spec"]["image_size"] = size
        p["input"]["size"] = size

    return rewrite_bundle(src, dst, edit)


class NotPlainData:  # pickled by reference; weights_only loading must refuse it
    pass


def pickle_bundle(dst: Path) -> Path:
    import torch

    torch.save({"format": "cxr_cad.model_bundle", "x": NotPlainData()}, dst)
    return Path(dst)


def crafted_dicom(ts, pixel_data: bytes, rows: int = 64, columns: int = 64, *, bits: int = 8):
    """A minimal CR PA data set with File Meta, whatever ``pixel_data`` holds (bombs, lies)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "CR", "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixel_data
    return ds


def rle_bomb_dicom(
    path: Path, rows: int = 65535, columns: int = 65535, bits: int = 16, frames: int | None = None
) -> Path:
    """An ~8 KB RLE Lossless DICOM whose header declares ``rows`` x ``columns`` pixels."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless, generate_uid

    segments = 2 if bits == 16 else 1
    header = struct.pack("<16I", segments, *[64 + 4000 * i for i in range(segments)], *([0] * (15 - segments)))
    # each segment: repeat-run packets (-127 => 128 copies of the next byte)
    body = b"".join(bytes([0x81, 0x10]) * 2000 for _ in range(segments))
    frame = header + body
    ds = crafted_dicom(RLELossless, encapsulate([frame]), rows, columns, bits=bits)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BOMB"
    if frames is not None:
        ds.NumberOfFrames = frames
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny PNG whose IHDR declares ``width`` x ``height`` 8-bit gray pixels (Pillow: a bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    raw = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    Path(path).write_bytes(raw)
    return Path(path)


def yaml_bomb(path: Path, *, under_valid_keys: bool = False, levels: int = 9) -> Path:
    """A billion-laughs YAML file: ``levels`` anchors, each a list of 9 aliases of the previous.

    ``under_valid_keys`` nests the anchors under one key and uses the last one as a workflow's
    ``data.test`` value, so validation (not parsing) meets the expansion."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    if under_valid_keys:
        lines = ["bomb:"] + ["  " + ln for ln in lines] + ["data:", f"  test: *a{levels - 1}"]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def non_utf8_yaml(path: Path) -> Path:
    Path(path).write_bytes(b"name: caf\xe9\nsteps: [predict]\n")
    return Path(path)


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return Path(path)


def write_pngs(folder: Path, n: int = 4, size: int = 64, seed: int = 0) -> list[Path]:
    """``n`` small gray PNG radiograph stand-ins (varying content, never constant)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = (rng.random((size, size)) * 255).astype(np.uint8)
        p = folder / f"P{i:04d}-0.png"
        Image.fromarray(img).save(p)
        out.append(p)
    return out
