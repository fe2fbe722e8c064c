"""Inputs of a batch prediction: collect, fingerprint, and split them across torchrun ranks.

A prediction run works on one sorted list of input files (:class:`PredictInput`), built
from folders (recursive, via :func:`cxr_cad.io.scan.iter_files`), manifests (``.csv``,
paths relative to the manifest's folder, with labels when the manifest has them) and
single files. The list's :func:`inputs_fingerprint` lets a resumed run check that it is
working on the same inputs; :func:`batch_shard` deals batches of the still-missing items
round-robin to the ranks, so the batches (and so the numbers) are the same whatever the
number of processes.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cxr_cad.errors import UsageError

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
    from cxr_cad.manifest import read_manifest, resolve_paths

    df = resolve_paths(read_manifest(path, check_files=False), path.parent)
    labels = df["label"] if "label" in df.columns else None
    out = []
    for i, p in enumerate(df["path"].tolist()):
        label = "" if labels is None else labels.iloc[i]
        label = "" if label is None or (isinstance(label, float) and label != label) else str(label)
        out.append((str(Path(p).absolute()), label))
    return out


def collect_inputs(sources: Sequence[str | os.PathLike]) -> tuple[list[PredictInput], bool]:
    """Every input file named by ``sources``, sorted by path, each once.

    A source is a folder (every file below it, recursively: DICOM, PNG, JPEG, and also files
    that will be rejected, so that each one is accounted for), a manifest (``.csv``) or a
    single file. Returns the inputs and whether any carries a label. A file named twice
    keeps the first non-empty label; two different labels for one file raise UsageError.
    Raises UsageError for a source that does not exist.
    """
    from cxr_cad.io.scan import iter_files

    labels: dict[str, str] = {}
    missing = [str(s) for s in sources if not Path(s).exists()]
    if missing:
        raise UsageError(f"source(s) not found: {', '.join(missing)}; give existing folders, "
                         "files or manifest .csv files")
    conflicts = []
    for source in sources:
        src = Path(source)
        if src.is_dir():
            items: Iterable[tuple[str, str]] = ((str(Path(p).absolute()), "") for p in iter_files([src]))
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
        raise UsageError(f"{len(conflicts)} file(s) have two different labels in the sources, "
                         f"e.g. {conflicts[0]}; fix the manifests")
    paths = sorted(labels)
    inputs = [PredictInput(i, p, labels[p]) for i, p in enumerate(paths)]
    has_labels = any(x.label for x in inputs)
    log.info("%d input file(s) from %d source(s)%s", len(inputs), len(sources),
             ", labelled" if has_labels else "")
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


def batch_shard(indices: Sequence[int], batch_size: int, rank: int = 0,
                world_size: int = 1) -> list[list[int]]:
    """The batches of ``indices`` (kept in order) that ``rank`` of ``world_size`` processes.

    ``indices`` is cut into consecutive batches of ``batch_size``; batch ``k`` goes to rank
    ``k % world_size``. Every index lands in exactly one batch of exactly one rank, and the
    batches are the same as in a single-process run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    batches = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
    return batches[rank::world_size]
