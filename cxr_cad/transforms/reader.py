"""Reading radiographs in MONAI chains through :func:`cxr_cad.io.read_image`.

MONAI's own DICOM readers ignore MONOCHROME1 and VOI LUT; ours goes through
``cxr_cad.io`` (Modality LUT, VOI LUT / windowing, MONOCHROME1 inversion, scaling to
[0, 1]), so training, evaluation and prediction all see the same pixels.

* :class:`LoadCxrImaged` is a plain MONAI ``MapTransform`` (public API only): it replaces the
  path under each key by a ``(1, H, W)`` float32 ``MetaTensor`` (the same tensor and
  metadata MONAI ``LoadImaged`` would build from :class:`CxrReader`), and raises
  :class:`~cxr_cad.errors.RejectedFile` for a file ``cxr_cad.io`` does not accept
  (MONAI's ``Compose`` wraps it in a ``RuntimeError`` whose ``__cause__`` it is).
* :class:`CxrReader` is the same reader as a MONAI ``ImageReader`` for code that uses MONAI's
  ``LoadImage(reader=CxrReader())``.
* :func:`rejection_record` turns such an error into a plain record ``{"path", "reason",
  "detail"}`` *where it happens* (in the dataset, inside a DataLoader worker), so a rejected
  file travels to the main process as data, never as exception text
  (:data:`REJECTED_KEY`; :func:`cxr_cad.transforms.make_dataset`).

Arrays come back in numpy (rows, columns) order, display orientation — *not* MONAI
``PILReader``'s reversed (x, y) indexing — so ``image[0, r, c]`` is row ``r``,
column ``c`` of the radiograph as displayed, and horizontal flips act on the last axis.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.transforms import EnsureChannelFirst, MapTransform
from monai.utils import ImageMetaKey

from cxr_cad.errors import ManifestError, Reason, RejectedFile

if TYPE_CHECKING:
    from monai.config import KeysCollection

    from cxr_cad.io import AcceptPolicy

#: File suffixes this reader claims for MONAI's automatic reader selection. DICOM files
#: often have no suffix; LoadImaged is always given a CxrReader instance explicitly.
SUFFIXES = ("dcm", "dicom", "dic", "png", "jpg", "jpeg", "")

#: Metadata from ``read_image`` kept on the MetaTensor (plain str/int values only).
_META_KEYS = ("format", "modality", "view_position", "photometric_interpretation", "rows", "columns")

#: Key of a sample dict that holds a :class:`Rejection` instead of an image.
REJECTED_KEY = "rejected"


class Rejection(TypedDict):
    """A file that was not used, and why (the columns of ``rejected.csv``)."""

    path: str
    reason: str
    detail: str


def find_rejection(exc: BaseException) -> RejectedFile | None:
    """The :class:`RejectedFile` behind an exception raised by a transform chain, if any.

    MONAI wraps errors raised inside ``Compose`` in ``RuntimeError``; this walks the
    ``__cause__``/``__context__`` chain (in the process that raised it). Returns None when
    there is no RejectedFile behind ``exc``. Exceptions re-raised from a DataLoader worker
    carry text only: datasets return :func:`rejection_record` s instead.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, RejectedFile):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def rejection_record(exc: BaseException, path: str | os.PathLike[str] | None = None) -> Rejection | None:
    """``{"path", "reason", "detail"}`` of the :class:`RejectedFile` behind ``exc`` (None if none).

    ``path`` is used when the error does not name the file."""
    rej = find_rejection(exc)
    if rej is None:
        return None
    where = rej.path if rej.path is not None else ("" if path is None else os.fspath(path))
    return {"path": where, "reason": rej.reason.value, "detail": rej.detail}


def read_cxr(
    path: str | os.PathLike[str], policy: AcceptPolicy | None, reduce_to: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode ``path`` with ``cxr_cad.io.read_image``: (H, W) float32 [0, 1] + MONAI metadata.

    The metadata holds the plain str/int entries of ``_META_KEYS``,
    ``original_channel_dim="no_channel"`` and ``spatial_shape``.

    Raises:
        RejectedFile: the file is not accepted (reason code + file name).
    """
    import cxr_cad.io as cio  # looked up at call time (tests count calls)

    pixels, meta = cio.read_image(path, policy=policy or cio.AcceptPolicy(), reduce_to=reduce_to)
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise RejectedFile(Reason.DECODE_FAILED, f"expected a 2-D image, got shape {pixels.shape}", path)
    out: dict[str, Any] = {k: meta[k] for k in _META_KEYS if k in meta and isinstance(meta[k], (str, int))}
    out.update({"original_channel_dim": "no_channel", "spatial_shape": np.asarray(pixels.shape)})
    return pixels, out


class CxrReader(ImageReader):
    """Read one radiograph (DICOM, PNG or JPEG) through :func:`cxr_cad.io.read_image`.

    Args:
        policy: a :class:`cxr_cad.io.AcceptPolicy`; None builds the default policy with
            ``apply_voi`` as given.
        reduce_to: passed to ``read_image``: the caller will resize so the shorter side is
            about this many pixels, so a codec may decode at a reduced resolution
            (never below it). None = full resolution.
        apply_voi: used only when ``policy`` is None.

    ``get_data`` returns a 2-D float32 array in [0, 1] (rows, columns) and a metadata
    dict with ``original_channel_dim="no_channel"`` and ``spatial_shape``.
    Raises :class:`~cxr_cad.errors.RejectedFile` (from ``get_data``) for a file that
    ``cxr_cad.io`` does not accept.
    """

    def __init__(self, policy: AcceptPolicy | None = None, reduce_to: int | None = None, apply_voi: bool = True):
        super().__init__()
        self.policy = policy
        self.reduce_to = reduce_to
        self.apply_voi = apply_voi

    def accept_policy(self) -> AcceptPolicy:
        """The policy given, else the default one with ``apply_voi`` (built once)."""
        if self.policy is not None:
            return self.policy
        from cxr_cad.io import AcceptPolicy

        self.policy = AcceptPolicy(apply_voi=self.apply_voi)
        return self.policy

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).suffix.lower().lstrip(".") in SUFFIXES for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Path:
        """Record the path, no I/O: the decode happens in ``get_data``, whose exceptions MONAI's
        ``LoadImage`` lets through (it swallows those of ``read``). Only one file per item."""
        if not isinstance(data, (str, os.PathLike)):
            data = list(data)
            if len(data) != 1:
                raise ValueError(f"CxrReader reads one file per item, got {len(data)}: {data!r}")
            data = data[0]
        return Path(data)

    def get_data(self, img: Path) -> tuple[np.ndarray, dict]:
        """Decode ``img`` (:func:`read_cxr`); (H, W) float32 [0, 1] + meta.

        Raises:
            RejectedFile: the file is not accepted (reason code + file name).
        """
        return read_cxr(img, self.accept_policy(), self.reduce_to)


class LoadCxrImaged(MapTransform):
    """Replace the path under each key by its image, ``(1, H, W)`` float32 ``MetaTensor``.

    The tensor and its metadata are what MONAI ``LoadImaged(reader=CxrReader(...),
    image_only=True, ensure_channel_first=True, dtype=float32)`` returns, built with public
    MONAI API only and without instantiating MONAI's other readers.

    Args:
        keys: the item key(s) holding a file path.
        reader: the :class:`CxrReader` whose policy and ``reduce_to`` are used.

    Raises :class:`~cxr_cad.errors.RejectedFile` for a file that is not accepted.
    """

    def __init__(self, keys: KeysCollection, reader: CxrReader, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.reader = reader

    def load(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """One file as a ``(1, H, W)`` float32 MetaTensor (see the class docstring)."""
        name = str(Path(path).expanduser())
        pixels, meta = self.reader.get_data(self.reader.read(name))
        meta[ImageMetaKey.FILENAME_OR_OBJ] = name
        img = MetaTensor.ensure_torch_and_prune_meta(pixels, meta)
        return EnsureChannelFirst()(img, meta_dict=meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.load(d[key])
        return d


def rejected_error(records: Sequence[Rejection], what: str) -> ManifestError:
    """The error for images of a training/validation table that cannot be read (each one named).

    The records come from the dataset (:func:`cxr_cad.transforms.collate_samples`), in the
    DataLoader worker that read the file, never from exception text."""
    names = [f"{r['path']}: [{r['reason']}] {r['detail']}" for r in records]
    return ManifestError(
        [
            f"a {what} image cannot be read: {name}; remove it from the manifest "
            "(`cxr-cad ingest` rejects such files) and rerun"
            for name in names
        ]
    )
