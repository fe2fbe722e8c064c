"""``CxrReader``: a MONAI :class:`~monai.data.ImageReader` over :func:`cxr_cad.io.read_image`.

MONAI's own DICOM readers ignore MONOCHROME1 and VOI LUT; ours goes through
``cxr_cad.io`` (Modality LUT, VOI LUT / windowing, MONOCHROME1 inversion, scaling to
[0, 1]), so training, evaluation and prediction all see the same pixels.

The reader's ``read`` only records the path; the decode happens in ``get_data``. This
matters because MONAI's ``LoadImage`` swallows exceptions raised by ``read`` (it tries
the next reader and finally raises a generic ``RuntimeError``), while exceptions from
``get_data`` propagate: a :class:`~cxr_cad.errors.RejectedFile` keeps its reason code
and file name (MONAI's ``Compose`` wraps it in a ``RuntimeError``; see
:func:`find_rejection`).

Arrays come back in numpy (rows, columns) order, display orientation — *not* MONAI
``PILReader``'s reversed (x, y) indexing — so ``image[0, r, c]`` is row ``r``,
column ``c`` of the radiograph as displayed, and horizontal flips act on the last axis.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.transforms import LoadImage, LoadImaged, MapTransform

from cxr_cad.errors import Reason, RejectedFile

#: File suffixes this reader claims for MONAI's automatic reader selection. DICOM files
#: often have no suffix; LoadImaged is always given a CxrReader instance explicitly.
SUFFIXES = ("dcm", "dicom", "dic", "png", "jpg", "jpeg", "")

#: Metadata from ``read_image`` kept on the MetaTensor (plain str/int values only).
_META_KEYS = ("format", "modality", "view_position", "photometric_interpretation", "rows", "columns")


_REJECTED_LINE = re.compile(
    r"^(?:cxr_cad\.errors\.)?RejectedFile: (?:(?P<path>.*?): )?"
    r"\[(?P<reason>[A-Z_]+)\] (?P<detail>.*)$"
)


def find_rejection(exc: BaseException) -> RejectedFile | None:
    """The :class:`RejectedFile` behind an exception raised by a transform chain, if any.

    MONAI wraps errors raised inside ``Compose`` in ``RuntimeError``; this walks the
    ``__cause__``/``__context__`` chain, and for an error re-raised from a DataLoader worker
    (which keeps only the traceback text) parses the ``RejectedFile`` line. Returns None
    when there is no RejectedFile behind ``exc``.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, RejectedFile):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    # A DataLoader worker re-raises in the main process with the worker's traceback as text only.
    for line in reversed(str(exc).splitlines()):
        m = _REJECTED_LINE.match(line.strip())
        if m and m.group("reason") in Reason.__members__:
            return RejectedFile(Reason(m.group("reason")), m.group("detail"), m.group("path"))
    return None


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

    def __init__(self, policy: Any = None, reduce_to: int | None = None, apply_voi: bool = True):
        super().__init__()
        self.policy = policy
        self.reduce_to = reduce_to
        self.apply_voi = apply_voi

    def _policy(self) -> Any:
        if self.policy is not None:
            return self.policy
        from cxr_cad.io import AcceptPolicy

        self.policy = AcceptPolicy(apply_voi=self.apply_voi)
        return self.policy

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).suffix.lower().lstrip(".") in SUFFIXES for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Path:
        """Record the path (no I/O; see the module docstring). Only one file per item."""
        if not isinstance(data, (str, os.PathLike)):
            data = list(data)
            if len(data) != 1:
                raise ValueError(f"CxrReader reads one file per item, got {len(data)}: {data!r}")
            data = data[0]
        return Path(data)

    def get_data(self, img: Path) -> tuple[np.ndarray, dict]:
        """Decode ``img`` with ``cxr_cad.io.read_image``; (H, W) float32 [0, 1] + meta.

        Raises:
            RejectedFile: the file is not accepted (reason code + file name).
        """
        import cxr_cad.io as cio  # looked up at call time (tests count calls)

        pixels, meta = cio.read_image(img, policy=self._policy(), reduce_to=self.reduce_to)
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 2:
            raise RejectedFile("DECODE_FAILED", f"expected a 2-D image, got shape {pixels.shape}", img)
        out = {k: meta[k] for k in _META_KEYS if k in meta and isinstance(meta[k], (str, int))}
        out.update(
            {
                "original_channel_dim": "no_channel",
                "spatial_shape": np.asarray(pixels.shape),
            }
        )
        return pixels, out


class _CxrLoadImage(LoadImage):
    """MONAI ``LoadImage`` with exactly one reader (a :class:`CxrReader`).

    ``LoadImage.__init__`` instantiates every MONAI reader it knows (ITK, NiBabel,
    PIL, pydicom, and nvImageCodec, which may register pydicom decoder plugins
    process-wide and warns when it is absent). Our pixels must come from
    ``cxr_cad.io`` only, so the attributes ``LoadImage.__call__`` uses are set here
    instead and the loader never falls back to another reader.
    """

    def __init__(self, reader: CxrReader):  # noqa: super().__init__ deliberately not called
        self.auto_select = False
        self.image_only = True
        self.dtype = np.float32
        self.ensure_channel_first = True
        self.simple_keys = False
        self.pattern = None
        self.sep = "."
        self.expanduser = True
        self.readers = [reader]


class LoadCxrImaged(LoadImaged):
    """``LoadImaged`` reading through one :class:`CxrReader`; output ``(1, H, W)`` float32.

    The image replaces the path under each key (``image_only``); no metadata dict is added.
    """

    def __init__(self, keys: Any, reader: CxrReader, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self._loader = _CxrLoadImage(reader)
        self.meta_keys = tuple(None for _ in self.keys)
        self.meta_key_postfix = tuple("meta_dict" for _ in self.keys)
        self.overwriting = False
