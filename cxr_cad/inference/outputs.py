"""Crash-safe outputs of a batch prediction: run state, append-only journals, final merge.

Layout of an output folder ``OUT``::

    OUT/predictions.csv        final, written atomically once every input is done
    OUT/rejected.csv           final, atomically, same time
    OUT/summary.json           counts, timing, runtime, model hash
    OUT/.predict/state.json    what this folder is for: model sha256 + inputs fingerprint + settings
    OUT/.predict/part-rank<R>.jsonl   one JSON line per finished input, appended per batch

A journal line is only counted when it is complete (ends with a newline and parses), so a
``kill -9`` mid-write loses at most the batch being written; on reopen the torn tail is cut
off. Each batch is appended with one ``write`` and made durable with ``fsync``. Final files
are written to a temporary name, fsynced and renamed (``os.replace``), so readers see the
old file or the new one, never half of one. Each journal is held under an exclusive
``flock`` while a run appends to it, so two runs cannot write the same folder at once.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from cxr_cad.core import atomic
from cxr_cad.core.atomic import PathLike
from cxr_cad.core.columns import PREDICTION_COLUMNS, REJECTED_COLUMNS
from cxr_cad.errors import OutputError, UsageError

log = logging.getLogger(__name__)

STATE_DIR = ".predict"
STATE_FILE = "state.json"
PREDICTIONS = "predictions.csv"
REJECTED = "rejected.csv"
SUMMARY = "summary.json"
#: Hint of every OutputError raised here: a rerun keeps the finished inputs.
_HINT = "free space (or fix permissions) and run the same command again: finished inputs are kept"


def atomic_write_text(path: PathLike, text: str, *, hint: str = _HINT) -> None:
    """:func:`cxr_cad.atomic.atomic_write_text` with this module's hint (``(path, text)`` order).

    Raises OutputError naming the folder (a full disk leaves the old file, or none)."""
    atomic.atomic_write_text(path, text, hint=hint)


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` (and parents) and prove a file can be written there.

    Raises OutputError naming the folder when it cannot be created or written.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        with open(probe, "w", encoding="ascii") as fh:
            fh.write("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {out_dir}: {exc.strerror or exc}; choose a writable --out"
        ) from exc


def prepare_out_dir(out_dir: Path, state: dict, *, overwrite: bool) -> bool:
    """Make ``out_dir`` ready for a run described by ``state``. Returns True when resuming.

    * empty or new folder: writes ``state`` and starts a fresh run;
    * folder of an earlier run with the same ``state``: resume (finished inputs are kept);
    * folder of an earlier run with a different model, inputs or settings, or a folder that
      holds a ``predictions.csv`` this code did not journal: UsageError, unless
      ``overwrite`` (then the old outputs and journals are deleted first).
    Raises OutputError when the folder cannot be written.
    """
    check_writable(out_dir)
    state = json.loads(json.dumps(state, sort_keys=True))  # compare as stored (tuples -> lists)
    state_dir = out_dir / STATE_DIR
    state_path = state_dir / STATE_FILE
    if overwrite:
        for name in (PREDICTIONS, REJECTED, SUMMARY):
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    if state_path.exists():
        try:
            old = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"{state_path} is unreadable ({exc}); use a new --out or --overwrite") from exc
        changed = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
        if changed:
            raise UsageError(
                f"{out_dir} holds a prediction run with a different {', '.join(changed)}; "
                "use a new --out, or --overwrite to discard it"
            )
        log.info("resuming the prediction run in %s", out_dir)
        return True
    if (out_dir / PREDICTIONS).exists():
        raise UsageError(
            f"{out_dir / PREDICTIONS} exists but was not written by a resumable run; "
            "use a new --out, or --overwrite to replace it"
        )
    state_dir.mkdir(exist_ok=True)
    for stale in state_dir.glob("part-rank*.jsonl"):  # journals without a state: not trustworthy
        stale.unlink()
    atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True))
    return False


def _read_journal(path: Path) -> tuple[list[dict], int]:
    """Complete records of one journal and the byte length they fill (the torn tail excluded)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    records = []
    for n, line in enumerate(data[:end].splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise OutputError(f"{path} line {n} is corrupt ({exc}); use a new --out or --overwrite") from exc
    if end < len(data):
        log.warning("%s: ignoring a torn last line (%d bytes) from an interrupted run", path, len(data) - end)
    return records, end


def read_journals(out_dir: Path) -> dict[int, dict]:
    """Every finished record in ``out_dir``'s journals, keyed by input index (first one wins)."""
    done: dict[int, dict] = {}
    for path in sorted((out_dir / STATE_DIR).glob("part-rank*.jsonl")):
        for rec in _read_journal(path)[0]:
            done.setdefault(int(rec["index"]), rec)
    return done


class Journal:
    """The append-only journal of one rank; use as a context manager.

    Opening it takes an exclusive lock (OutputError if another run holds it) and cuts a
    torn last line. :meth:`append` writes a batch of records with one write + fsync.
    """

    def __init__(self, out_dir: Path, rank: int = 0):
        self.path = out_dir / STATE_DIR / f"part-rank{rank}.jsonl"
        self._fh: BinaryIO | None = None

    def __enter__(self) -> Journal:
        fh = open(self.path, "ab+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            raise OutputError(
                f"another cxr-cad predict is writing {self.path.parent.parent}; wait for it or use a new --out"
            ) from exc
        _, end = _read_journal(self.path)
        if end < os.fstat(fh.fileno()).st_size:
            fh.truncate(end)
            os.fsync(fh.fileno())
        self._fh = fh
        return self

    def append(self, records: Iterable[dict]) -> None:
        """Append ``records`` (JSON-serialisable dicts with an ``index``) durably."""
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        if not payload:
            return
        if self._fh is None:
            raise RuntimeError("Journal.append outside its `with` block")
        try:
            self._fh.write(payload.encode("utf-8", "surrogatepass"))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:  # a torn last line is cut when the run is resumed
            raise OutputError(
                f"cannot write {self.path.name} in {self.path.parent}: {exc.strerror or exc}; {_HINT}"
            ) from exc

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def _csv_text(columns: Sequence[str], rows: Iterable[dict]) -> str:
    """``rows`` as CSV text with ``columns`` (other keys ignored), ``\n`` line ends."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: f"'{v}" if k in ("decision", "label") and str(v)[:1] in ("=", "+", "-", "@") else v
                for k, v in row.items()
            }
        )  # no spreadsheet formulas (docs/report.md#names)
    return buf.getvalue()


#: The decision values of a multi-label ``decision_<finding>`` column.
FINDING_PRESENT, FINDING_ABSENT = "present", "absent"


def multilabel_findings(meta: dict) -> list[tuple[str, float]] | None:
    """``[(finding, threshold)]`` in output (logit) order of a multi-label bundle's metadata
    (``extra.multilabel``, written by :mod:`cxr_cad.training.multilabel`), or None for a
    binary/multiclass bundle."""
    record = (meta.get("extra") or {}).get("multilabel")
    if not record:
        return None
    thresholds = record["thresholds"]
    return [(str(f), float(thresholds[f]["value"])) for f in record["findings"]]


def multilabel_prediction_columns(findings: Sequence[str]) -> list[str]:
    """``predictions.csv`` columns of a multi-label model: the binary columns with ``probability``,
    ``decision`` and ``threshold`` replaced by ``probability_<F>`` and ``decision_<F>`` per finding,
    in the model's output order (docs/predict.md#multi-label-models)."""
    per = [c for f in findings for c in (f"probability_{f}", f"decision_{f}")]
    out: list[str] = []
    for c in PREDICTION_COLUMNS:
        if c == "probability":
            out += per
        elif c not in ("decision", "threshold"):
            out.append(c)
    return out


def multilabel_fields(probabilities: Sequence[float], findings: Sequence[tuple[str, float]]) -> dict[str, str]:
    """The per-finding cells of one image: ``probability_<F>`` (6 decimals) and ``decision_<F>``
    (``present`` when ``probability >= threshold`` of that finding, else ``absent``)."""
    if len(probabilities) != len(findings):
        raise ValueError(f"{len(probabilities)} probabilities for {len(findings)} findings")
    cells: dict[str, str] = {}
    for p, (f, thr) in zip(probabilities, findings):
        cells[f"probability_{f}"] = f"{float(p):.6f}"
        cells[f"decision_{f}"] = FINDING_PRESENT if float(p) >= thr else FINDING_ABSENT
    return cells


def merge_outputs(
    out_dir: Path, n_inputs: int, *, with_label: bool, columns: Sequence[str] | None = None
) -> list[dict]:
    """Write ``predictions.csv`` and ``rejected.csv`` from the journals, in input order.

    ``columns``: the prediction columns (default :data:`PREDICTION_COLUMNS`; a multi-label model's
    come from :func:`multilabel_prediction_columns`).

    Raises OutputError when an input has no record (the run is not finished) — a bug or a
    journal deleted by hand. Returns the records in input order.
    """
    done = read_journals(out_dir)
    missing = [i for i in range(n_inputs) if i not in done]
    if missing:
        raise OutputError(
            f"{len(missing)} input(s) have no result in {out_dir / STATE_DIR}; "
            "run the same command again to finish them"
        )
    records = [done[i] for i in range(n_inputs)]
    pred_cols = list(columns or PREDICTION_COLUMNS) + (["label"] if with_label else [])
    # both tables are one unit: both written in full before either replaces an old one
    atomic.atomic_write_many(
        {
            out_dir / PREDICTIONS: _csv_text(pred_cols, (r for r in records if r["kind"] == "prediction")),
            out_dir / REJECTED: _csv_text(REJECTED_COLUMNS, (r for r in records if r["kind"] == "rejected")),
        },
        hint=_HINT,
    )
    return records
