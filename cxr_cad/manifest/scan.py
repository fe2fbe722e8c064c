"""Folder scanning: every input file becomes an accepted manifest row or a rejected row.

:func:`iter_files` (defined in :mod:`cxr_cad.manifest.walk`, re-exported here) walks sources
(folders recursively, or single files) in sorted order without following symlink loops.
:func:`scan_sources` reads each file's header (``cxr_cad.io.read_header``; optionally
decodes it fully) in a process pool, hashes its bytes, derives patient ids for PNG/JPEG
from the file name, and rejects duplicates. This is the one place that catches per-file
errors: a :class:`~cxr_cad.errors.RejectedFile` becomes a rejected row with its reason
code, anything unexpected becomes ``INTERNAL_ERROR`` with the exception text. Nothing is
dropped silently.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import pandas as pd

from cxr_cad.config.accept import AcceptPolicy
from cxr_cad.core.columns import REJECTED_COLUMNS
from cxr_cad.core.progress import progress
from cxr_cad.core.provenance import sha256_file
from cxr_cad.core.workers import default_workers
from cxr_cad.errors import Reason, RejectedFile
from cxr_cad.io.age import age_in_years
from cxr_cad.manifest.patients import (
    KERMANY_PATTERN,
    RASTER_SUFFIXES,
    PatientPattern,
    assign_patient_ids,
    check_given_pattern,
    resolve_patient_pattern,
)
from cxr_cad.manifest.schema import MANIFEST_COLUMNS, normalise_manifest
from cxr_cad.manifest.walk import iter_files, walk_sources  # noqa: F401 - iter_files re-exported (public API)

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

#: The Kermany pattern (kept under its old name; ingest now detects the collection's pattern,
#: :mod:`cxr_cad.manifest.patients`).
DEFAULT_PATIENT_ID_PATTERN = KERMANY_PATTERN
_MIN_FILES_FOR_POOL = 200


@dataclass
class ScanResult:
    """What :func:`scan_sources` found.

    Attributes:
        accepted: one row per accepted image, :data:`~cxr_cad.manifest.MANIFEST_COLUMNS`
            (absolute paths, ``label`` empty), sorted by path.
        rejected: one row per file not accepted: ``path``, ``reason`` (a
            :class:`~cxr_cad.errors.Reason` code), ``detail`` (a sentence), sorted by path.
        n_files: files considered (= accepted + rejected rows).
        patient_id_rule: how patient ids were obtained: ``pattern``, ``pattern_name``,
            ``chosen``, ``default_pattern`` (True when none was given), counts ``from_pattern``,
            ``from_file_stem`` (PNG/JPEG), ``from_dicom`` ((0010,0020) Patient ID),
            ``from_study_uid`` (DICOM without Patient ID: grouped by study), ``from_sop_uid``;
            ``shipped_pattern_matches`` and ``warning`` (see
            :func:`~cxr_cad.manifest.patients.assign_patient_ids`).
        skipped_dirs: folders not entered again (symlink loops or a second link to a folder).
        seconds: wall time of the scan.
        workers: processes used (1 = in this process).
    """

    accepted: pd.DataFrame
    rejected: pd.DataFrame
    n_files: int
    patient_id_rule: dict = field(default_factory=dict)
    skipped_dirs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1

    def rejected_by_reason(self) -> dict[str, int]:
        """``{reason code: count}``, most frequent first."""
        return {str(k): int(v) for k, v in self.rejected["reason"].value_counts().items()}


def scan_file(path: str, policy: AcceptPolicy, verify_pixels: bool = False) -> dict:
    """Scan one file; never raises for a bad file.

    PNG/JPEG rows get their patient id later, from the whole cohort's names
    (:func:`~cxr_cad.manifest.patients.assign_patient_ids`; ``pid_source`` ``"raster"``).

    Returns ``{"status": "accepted", "row": {...}, "pid_source": str}`` or
    ``{"status": "rejected", "row": {"path", "reason", "detail"}}``."""
    from cxr_cad.io import read_header, read_image  # the io package imports this module's siblings

    try:
        meta = read_header(path, policy=policy)
        if verify_pixels:
            read_image(path, policy=policy)
        digest = sha256_file(path)
    except RejectedFile as exc:
        return {"status": "rejected", "row": {"path": path, "reason": exc.reason.value, "detail": exc.detail}}
    except OSError as exc:
        return {
            "status": "rejected",
            "row": {
                "path": path,
                "reason": Reason.UNREADABLE.value,
                "detail": f"cannot read the file: {exc.strerror or exc}",
            },
        }
    except Exception as exc:  # noqa: BLE001 - the one per-file catch-all; recorded, never dropped
        log.debug("unexpected error scanning %s", path, exc_info=True)
        return {
            "status": "rejected",
            "row": {
                "path": path,
                "reason": Reason.INTERNAL_ERROR.value,
                "detail": f"{type(exc).__name__}: {exc} (a bug in cxr_cad; please report it with this file's header)",
            },
        }
    row = {c: meta.get(c) for c in MANIFEST_COLUMNS if c in meta}
    row["path"] = path
    row["sha256"] = digest
    row.pop("label", None)
    fmt = str(meta.get("format") or "")
    if fmt in ("png", "jpeg"):
        row["sop_instance_uid"] = f"sha256:{digest}"
        row["patient_id"] = ""
        source = "raster"
    else:
        pid = str(meta.get("patient_id") or "").strip()
        source = "from_dicom"
        if not pid:
            study = str(meta.get("study_instance_uid") or "").strip()
            sop = str(meta.get("sop_instance_uid") or "").strip()
            pid, source = (f"study:{study}", "from_study_uid") if study else (f"sop:{sop}", "from_sop_uid")
        row["patient_id"] = pid
    row["patient_age_years"] = age_in_years(meta.get("patient_age"))
    return {"status": "accepted", "row": row, "pid_source": source}


def _scan_task(args: tuple) -> dict:
    return scan_file(*args)


def _tqdm_monitors() -> set[object]:
    """The monitor threads tqdm started (its public class attribute ``monitor``; None when none)."""
    import tqdm.auto
    import tqdm.std

    return {m for m in (tqdm.std.tqdm.monitor, tqdm.auto.tqdm.monitor) if m is not None}


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux when this process runs no other thread than tqdm's monitor (fast: workers
    inherit the imported readers); else ``forkserver`` (its server imports the readers once, workers fork
    from it), else ``spawn``. Forking a process that runs other threads can deadlock the child."""
    methods = multiprocessing.get_all_start_methods()
    # tqdm's monitor thread (left running by disabled bars) only sleeps and workers never use tqdm
    monitors = _tqdm_monitors()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t not in monitors]
    if (
        sys.platform.startswith("linux")
        and "fork" in methods
        and not others
        and threading.current_thread() is threading.main_thread()
    ):
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["cxr_cad.manifest.scan", "cxr_cad.io", "cxr_cad.io.dicom", "cxr_cad.io.images"])
        return ctx
    return multiprocessing.get_context("spawn")


def _run_pool(tasks: list[tuple], n_workers: int) -> list[dict]:
    """Run :func:`scan_file` over ``tasks`` in a process pool, results in task order.

    A worker that dies (a codec crash, the OOM killer) breaks the pool: the files already done
    are kept, the first unfinished one is re-run alone in a fresh process (a file that kills
    that one too becomes an ``INTERNAL_ERROR`` row), and a new pool takes the rest."""
    ctx = _pool_context()
    results: list[dict | None] = [None] * len(tasks)
    remaining = list(range(len(tasks)))
    bar: tqdm[NoReturn] | None = None
    try:
        while remaining:
            chunk = max(1, min(16, len(remaining) // (n_workers * 16)))
            done = 0
            try:
                # the pool starts (and forks) before the progress bar starts its monitor thread
                with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                    it = pool.map(_scan_task, [tasks[i] for i in remaining], chunksize=chunk)
                    if bar is None:
                        bar = progress(total=len(tasks), desc="ingest", unit="file")
                    for r in it:
                        results[remaining[done]] = r
                        done += 1
                        bar.update(1)
                remaining = []
            except BrokenProcessPool:
                remaining = remaining[done:]
                head = remaining.pop(0)
                log.warning("a worker process died while scanning; re-reading %s alone", tasks[head][0])
                results[head] = _scan_isolated(tasks[head], ctx)
                if bar is None:
                    bar = progress(total=len(tasks), desc="ingest", unit="file")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]


def _scan_isolated(task: tuple, ctx: multiprocessing.context.BaseContext) -> dict:
    """:func:`scan_file` in a fresh single-worker process; a crash becomes an ``INTERNAL_ERROR`` row."""
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(_scan_task, task).result()
        except BrokenProcessPool:
            return {
                "status": "rejected",
                "row": {
                    "path": task[0],
                    "reason": Reason.INTERNAL_ERROR.value,
                    "detail": "the process reading this file died (a crash in a decoder, or out of memory); "
                    "check the file with another viewer and report it",
                },
            }


def _scan_all(tasks: list[tuple], n_workers: int) -> list[dict]:
    """:func:`scan_file` over ``tasks``, in this process (``n_workers == 1``) or in a pool."""
    if n_workers > 1:
        return _run_pool(tasks, n_workers)
    results: list[dict] = []
    bar: tqdm[NoReturn]
    with progress(total=len(tasks), desc="ingest", unit="file") as bar:
        for t in tasks:
            results.append(_scan_task(t))
            bar.update(1)
    return results


def _patient_id_rule(
    given: PatientPattern | None, results: list[dict], keep: list[dict]
) -> tuple[dict[str, Any], dict[str, str]]:
    """:attr:`ScanResult.patient_id_rule` and the PNG/JPEG patient ids (``{path: id}``) of the kept rows.

    PNG/JPEG ids come from the pattern given, else from the shipped pattern that matches most
    of the kept PNG/JPEG paths (:func:`~cxr_cad.manifest.patients.assign_patient_ids`)."""
    kept = {r["path"] for r in keep}
    source = {r["row"]["path"]: r["pid_source"] for r in results if r["status"] == "accepted"}
    raster = sorted(p for p in kept if source.get(p) == "raster")
    ids, rule = assign_patient_ids(raster, given)
    rule["default_pattern"] = given is None
    for k in ("from_dicom", "from_study_uid", "from_sop_uid"):
        rule[k] = sum(source.get(p) == k for p in kept)
    return rule, dict(zip(raster, ids))


def _mark_duplicates(accepted: list[dict]) -> tuple[list[dict], list[dict]]:
    """First file (in sorted path order) with a SOP Instance UID wins; later ones are rejected."""
    first: dict[str, dict] = {}
    keep, dups = [], []
    for row in sorted(accepted, key=lambda r: r["path"]):
        uid = str(row.get("sop_instance_uid") or "")
        if uid and uid in first:
            other = first[uid]
            if uid.startswith("sha256:"):
                dups.append(
                    {
                        "path": row["path"],
                        "reason": Reason.DUPLICATE_CONTENT.value,
                        "detail": f"byte-identical copy of {other['path']}, which was kept",
                    }
                )
            else:
                same = (
                    "a byte-identical copy"
                    if other.get("sha256") == row.get("sha256")
                    else "different bytes: check the export"
                )
                dups.append(
                    {
                        "path": row["path"],
                        "reason": Reason.DUPLICATE_SOP_INSTANCE.value,
                        "detail": f"same (0008,0018) SOP Instance UID as {other['path']}, which was kept ({same})",
                    }
                )
            continue
        if uid:
            first[uid] = row
        keep.append(row)
    return keep, dups


def scan_sources(
    sources: Iterable[str | os.PathLike],
    *,
    policy: AcceptPolicy = AcceptPolicy(),
    workers: int | None = None,
    patient_id_pattern: str | None = None,
    verify_pixels: bool = False,
    exclude: Iterable[str | os.PathLike] = (),
) -> ScanResult:
    """Scan folders/files into accepted manifest rows and rejected rows.

    Args:
        sources: folders (walked recursively, see :func:`iter_files`) and/or files.
        policy: what is accepted (modalities, lateral views); passed to ``read_header``.
        workers: processes (None = :func:`default_workers`, or 1 below 200 files; 1 = no pool,
            in this process).
        patient_id_pattern: how PNG/JPEG files get their patient id: a shipped pattern name
            (:data:`~cxr_cad.manifest.patients.PATIENT_PATTERNS`: ``kermany``, ``nih``,
            ``chexpert``, ``mimic``; or ``stem``), or a regex whose first group is the id
            (searched in the path when it holds ``/``, else in the file name). None: the shipped
            pattern matching the most names. No match -> the file stem; under 90 % matched ->
            ``patient_id_rule["warning"]`` (also logged).
        verify_pixels: also decode every file (``read_image``) so ``DECODE_FAILED`` and
            ``CONSTANT_IMAGE`` are found now rather than at training time (slower).
        exclude: folders whose files are not scanned (e.g. the output folder).

    Returns:
        :class:`ScanResult`; every file found is in exactly one of ``accepted``/``rejected``.

    Raises:
        UsageError: a source does not exist.
        ConfigError: the pattern is not a valid regex (a UsageError too).
        UsageError: a given pattern matches none of the PNG/JPEG names.
    """
    t0 = time.perf_counter()
    pattern = resolve_patient_pattern(patient_id_pattern)
    files, problems, skipped = walk_sources(sources, exclude)
    # a given pattern that matches no PNG/JPEG-named file fails now, not after a long scan
    check_given_pattern(pattern, [f for f in files if f.lower().endswith(RASTER_SUFFIXES)])
    if workers is None:  # a pool costs ~0.1-2 s to start: not worth it for a few hundred headers
        n_workers = default_workers() if len(files) >= _MIN_FILES_FOR_POOL else 1
    else:
        n_workers = max(1, int(workers))
    n_workers = min(n_workers, max(1, len(files)))
    if len(files) < 4:
        n_workers = 1
    results = _scan_all([(f, policy, verify_pixels) for f in files], n_workers)
    accepted = [r["row"] for r in results if r["status"] == "accepted"]
    rejected = [r["row"] for r in results if r["status"] == "rejected"]
    rejected += [{"path": p, "reason": reason.value, "detail": detail} for p, reason, detail in problems]
    accepted, dups = _mark_duplicates(accepted)
    rejected += dups
    rule, raster_ids = _patient_id_rule(pattern, results, accepted)
    for row in accepted:
        if row["path"] in raster_ids:
            row["patient_id"] = raster_ids[row["path"]]
    if rule["warning"]:
        log.warning("patient ids: %s", rule["warning"])
    acc_df = normalise_manifest(pd.DataFrame(accepted, columns=MANIFEST_COLUMNS))
    acc_df = acc_df.sort_values("path", kind="stable").reset_index(drop=True)
    rej_df = pd.DataFrame(rejected, columns=REJECTED_COLUMNS).sort_values("path", kind="stable")
    rej_df = rej_df.reset_index(drop=True)
    result = ScanResult(
        accepted=acc_df,
        rejected=rej_df,
        n_files=len(files) + len(problems),
        patient_id_rule=rule,
        skipped_dirs=skipped,
        seconds=time.perf_counter() - t0,
        workers=n_workers,
    )
    log.info(
        "scanned %d files in %.1f s with %d worker(s): %d accepted, %d rejected",
        result.n_files,
        result.seconds,
        n_workers,
        len(acc_df),
        len(rej_df),
    )
    return result
