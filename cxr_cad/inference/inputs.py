"""Inputs of a batch prediction: collect, fingerprint, split across torchrun ranks, load.

A prediction run works on one sorted list of input files (:class:`PredictInput`), built
from folders (recursive, via :func:`cxr_cad.manifest.scan.iter_files`), manifests (``.csv``,
paths relative to the manifest's folder, with labels when the manifest has them) and
single files. The list's :func:`inputs_fingerprint` lets a resumed run check that it is
working on the same inputs; :func:`batch_shard` deals batches of the still-missing items
round-robin to the ranks, so the batches (and so the numbers) are the same whatever the
number of processes. :class:`PredictDataset` decodes and preprocesses one input in a
DataLoader worker and turns a bad file into a record instead of an exception;
:func:`collate_records` lets those records flow through the batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch

from cxr_cad import io as image_io
from cxr_cad.config import AcceptPolicy
from cxr_cad.core.provenance import sha256_file
from cxr_cad.errors import ConfigError, Reason, RejectedFile, UsageError
from cxr_cad.manifest import read_manifest, resolve_paths
from cxr_cad.manifest.scan import iter_files
from cxr_cad.transforms import LoadCxrImaged, build_load_transforms, build_post_transforms, rejection_record

if TYPE_CHECKING:
    from cxr_cad.transforms import TransformSpec

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv",)


@dataclass(frozen=True)
class PredictInput:
    """One input file: its position in the sorted input list, its path and its label (or "")."""

    index: int
    path: str
    label: str = ""


def _manifest_items(path: Path) -> list[tuple[str, str]]:
    """(absolute path, label or "") for every row of the manifest at ``path``.

    Listed files that do not exist are kept (they become rejected rows, not a failure).
    Raises :class:`~cxr_cad.errors.ManifestError` (exit 2) for a manifest that fails validation.
    """
    df = resolve_paths(read_manifest(path, check_files=False), path.parent)
    labels = df["label"] if "label" in df.columns else None
    out = []
    for i, p in enumerate(df["path"].tolist()):
        label = "" if labels is None else labels.iloc[i]
        label = "" if label is None or (isinstance(label, float) and label != label) else str(label)
        out.append((str(Path(p).absolute()), label))
    return out


def collect_inputs(
    sources: Sequence[str | os.PathLike], *, exclude: Sequence[str | os.PathLike] = ()
) -> tuple[list[PredictInput], bool]:
    """Every input file named by ``sources``, sorted by path, each once.

    A source is a folder (every file below it, recursively: DICOM, PNG, JPEG, and also files
    that will be rejected, so that each one is accounted for), a manifest (``.csv``) or a
    single file. Returns the inputs and whether any carries a label. A file named twice
    keeps the first non-empty label; two different labels for one file raise UsageError.
    Files under ``exclude`` (the output folder) are never inputs.
    Raises UsageError for a source that does not exist.
    """
    labels: dict[str, str] = {}
    missing = [str(s) for s in sources if not Path(s).exists()]
    if missing:
        raise UsageError(
            f"source(s) not found: {', '.join(missing)}; give existing folders, files or manifest .csv files"
        )
    conflicts = []
    for source in sources:
        src = Path(source)
        if src.is_dir():
            items: Iterable[tuple[str, str]] = (
                (str(Path(p).absolute()), "") for p in iter_files([src], exclude=exclude)
            )
        elif src.suffix.lower() in MANIFEST_SUFFIXES:
            items = _manifest_items(src)
        else:
            items = [(str(src.absolute()), "")]
        for path, label in items:
            old = labels.get(path)
            if old is None or old == "":
                labels[path] = label
            elif label and label != old:
                conflicts.append(f"{path}: {old!r} vs {label!r}")
    if conflicts:
        raise UsageError(
            f"{len(conflicts)} file(s) have two different labels in the sources, e.g. {conflicts[0]}; fix the manifests"
        )
    skip = [str(Path(e).absolute()) for e in exclude]
    paths = sorted(p for p in labels if not any(p == e or p.startswith(e + os.sep) for e in skip))
    inputs = [PredictInput(i, p, labels[p]) for i, p in enumerate(paths)]
    has_labels = any(x.label for x in inputs)
    log.info("%d input file(s) from %d source(s)%s", len(inputs), len(sources), ", labelled" if has_labels else "")
    return inputs, has_labels


def inputs_fingerprint(inputs: Sequence[PredictInput]) -> str:
    """sha256 over (path, size in bytes, label) of every input, in order.

    Sizes are read with ``os.stat``; a missing file counts as size -1 (it will be rejected).
    """
    h = hashlib.sha256()
    for item in inputs:
        try:
            size = os.stat(item.path).st_size
        except OSError:
            size = -1
        h.update(f"{item.path}\t{size}\t{item.label}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def batch_shard(indices: Sequence[int], batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """The batches of ``indices`` (kept in order) that ``rank`` of ``world_size`` processes.

    ``indices`` is cut into consecutive batches of ``batch_size``; batch ``k`` goes to rank
    ``k % world_size``. Every index lands in exactly one batch of exactly one rank, and the
    batches are the same as in a single-process run.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    batches = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    return batches[rank::world_size]


#: One decoded image, (H, W) float32 in [0, 1] -> the model input, (C, S, S) float32.
Preprocess = Callable[[np.ndarray], torch.Tensor]


class Sample(TypedDict, total=False):
    """One item of :class:`PredictDataset`: the input's index and either the image and its
    identifiers, or why it was not scored (``reason``, ``detail``)."""

    index: int
    image: torch.Tensor
    sop_instance_uid: str
    study_instance_uid: str
    reason: str
    detail: str


class Batch(TypedDict):
    """What :func:`collate_records` makes of a list of :class:`Sample`."""

    images: torch.Tensor | None
    accepted: list[Sample]
    rejected: list[Sample]


def make_preprocess(spec: TransformSpec) -> Preprocess:
    """The bundle's eval chain after decoding: (H, W) float32 [0, 1] array -> (C, S, S) tensor.

    It is :func:`cxr_cad.transforms.build_eval_transforms` without its first step
    (:class:`~cxr_cad.transforms.LoadCxrImaged`), because predict decodes with
    ``cxr_cad.io.read_image`` itself to keep the file's DICOM identifiers. Raises
    RuntimeError if that chain no longer starts with ``LoadCxrImaged`` (the two would
    silently drift apart otherwise).
    """
    from monai.transforms import Compose

    load = build_load_transforms(spec)
    if not isinstance(load[0], LoadCxrImaged):
        raise RuntimeError(
            "cxr_cad.transforms.build_load_transforms no longer starts with LoadCxrImaged; "
            "update cxr_cad.inference.inputs.make_preprocess"
        )
    chain = Compose(load[1:] + build_post_transforms(spec))

    def preprocess(pixels: np.ndarray) -> torch.Tensor:
        if not pixels.flags.writeable:  # torch wants writable memory
            pixels = pixels.copy()
        image = chain({"image": torch.from_numpy(pixels[None])})["image"]
        return image.as_tensor() if hasattr(image, "as_tensor") else image

    return preprocess


class PredictDataset(torch.utils.data.Dataset[Sample]):
    """Decodes and preprocesses one input per item; never raises for a bad file.

    An item is a :class:`Sample`: ``index`` and either ``image`` (a (C, S, S) float32
    tensor), ``sop_instance_uid``, ``study_instance_uid``, or ``reason`` + ``detail`` for a
    file that was not accepted (``RejectedFile``) or failed unexpectedly (``INTERNAL_ERROR``).
    """

    def __init__(self, inputs: Sequence[PredictInput], policy: AcceptPolicy | None, spec: TransformSpec):
        self.inputs = inputs
        self.policy = policy
        # the working resolution of cxr_cad.io.working, as cxr_cad.transforms.build_load_transforms
        self.reduce_to = spec.image_size
        self.preprocess = make_preprocess(spec)

    def __len__(self) -> int:
        return len(self.inputs)

    def _load(self, item: PredictInput) -> Sample:
        pixels, meta = image_io.read_image(  # looked up per call (tests replace it)
            item.path, policy=self.policy or AcceptPolicy(), reduce_to=self.reduce_to
        )
        image = self.preprocess(pixels)
        sop = meta.get("sop_instance_uid") or ""
        if not sop and meta.get("format") in ("png", "jpeg"):
            sop = f"sha256:{sha256_file(item.path)}"
        return {
            "index": item.index,
            "image": image,
            "sop_instance_uid": sop,
            "study_instance_uid": meta.get("study_instance_uid") or "",
        }

    def __getitem__(self, i: int) -> Sample:
        item = self.inputs[i]
        try:
            return self._load(item)
        except RejectedFile as exc:
            return {"index": item.index, "reason": exc.reason.value, "detail": exc.detail}
        except Exception as exc:  # noqa: BLE001 -- every input is accounted for, never dropped
            record = rejection_record(exc, item.path)  # a RejectedFile wrapped by a MONAI transform
            if record is not None:
                return {"index": item.index, "reason": record["reason"], "detail": record["detail"]}
            log.warning("internal error on input #%d: %s: %s", item.index, type(exc).__name__, exc)
            return {
                "index": item.index,
                "reason": Reason.INTERNAL_ERROR.value,
                "detail": f"{type(exc).__name__}: {exc}",
            }


def collate_records(items: list[Sample]) -> Batch:
    """Stack the accepted images of a batch; pass the rejected records through.

    Returns ``{"images": (N, C, S, S) tensor or None, "accepted": [...], "rejected": [...]}``.
    """
    accepted = [x for x in items if "image" in x]
    rejected = [x for x in items if "image" not in x]
    images = torch.stack([x.pop("image") for x in accepted]) if accepted else None
    return {"images": images, "accepted": accepted, "rejected": rejected}
