"""The step runner: run named steps in one run folder, skip what is up to date, resume the rest.

Each step ``S`` owns the folder ``RUN_DIR/S/`` and a record ``RUN_DIR/S/step.json``::

    {"step": "train", "status": "running" | "done", "config": {...}, "config_hash": "...",
     "inputs": {"name": "hash", ...}, "fingerprint": "...", "outputs": {...},
     "output_hashes": {"file": "hash"}, "started": "...", "finished": "...", "seconds": 12.3}

The *fingerprint* is the sha256 of the step's resolved config, the hashes of its inputs
(files/folders it reads, and the output hashes of the steps it depends on) and the
cxr_cad version (an upgrade reruns everything). On a rerun:

* ``done`` with the same fingerprint and unchanged output files -> skipped;
* ``running`` (the step was interrupted) with the same fingerprint -> called again with
  ``ctx.resume = True`` in the same folder (training resumes after the last checkpointed
  epoch, batch prediction after the last written chunk);
* anything else (new config or inputs, or outputs edited/removed) -> the step folder is
  emptied and the step runs from the start, and so do the steps downstream of it
  (their fingerprints include this step's output hashes).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.core.provenance import __version__, sha256_bytes, sha256_file
from cxr_cad.errors import OutputError

log = logging.getLogger(__name__)

__all__ = ["Step", "StepContext", "StepOutcome", "run_steps", "hash_path", "hash_config", "STEP_RECORD"]

STEP_RECORD = "step.json"


def hash_config(config: Any) -> str:
    """sha256 of a JSON-able value (keys sorted; non-JSON values by ``str``)."""
    return sha256_bytes(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))


def hash_path(path: str | os.PathLike | None) -> str:
    """A hash that changes when the input changes.

    * file: sha256 of its bytes;
    * folder: sha256 over every file below it as (relative path, size, mtime in ns) — a
      cheap listing hash, so a 20,000-file DICOM folder is not read twice;
    * missing / None: ``"missing"``.
    """
    if path is None:
        return "missing"
    p = Path(path)
    if p.is_file():
        return "sha256:" + sha256_file(p)
    if p.is_dir():
        h = hashlib.sha256()
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                f = Path(root) / name
                try:
                    st = f.stat()
                except OSError:
                    continue
                h.update(f"{f.relative_to(p).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "listing:" + h.hexdigest()
    return "missing"


@dataclass
class StepContext:
    """What a step function gets.

    ``step_dir`` is the step's own folder (exists); ``upstream`` maps each finished earlier
    step name to its ``outputs`` dict; ``resume`` is True when an interrupted run of the
    same step with the same fingerprint is continued.
    """

    name: str
    run_dir: Path
    step_dir: Path
    config: dict
    upstream: dict[str, dict]
    resume: bool = False


@dataclass
class Step:
    """One step: ``func(ctx) -> outputs`` where ``outputs`` is a JSON-able dict.

    ``inputs`` names the files/folders read (hashed with :func:`hash_path`), ``depends``
    the earlier steps whose outputs it reads, ``output_files`` (keys of ``outputs`` whose
    values are paths relative to ``step_dir``, or absolute) the files whose hashes
    downstream steps depend on.
    """

    name: str
    func: Callable[[StepContext], dict]
    config: dict = field(default_factory=dict)
    inputs: Mapping[str, str | os.PathLike | None] = field(default_factory=dict)
    depends: Sequence[str] = ()
    output_files: Sequence[str] = ()


@dataclass
class StepOutcome:
    """What happened to one step: ``status`` is ``ran``, ``resumed`` or ``skipped``."""

    name: str
    status: str
    seconds: float
    outputs: dict
    step_dir: Path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_record(path: Path, obj: Any) -> None:
    """A JSON record (keys in the order given), written atomically; OutputError when it cannot be."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n", hint="choose another --out")


def _read_record(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); the step runs again", path, exc)
        return None
    return rec if isinstance(rec, dict) else None


def _output_hashes(step: Step, step_dir: Path, outputs: Mapping[str, Any]) -> dict[str, str]:
    hashes = {}
    for key in step.output_files:
        value = outputs.get(key)
        if value is None:
            hashes[key] = "missing"
            continue
        p = Path(value)
        hashes[key] = hash_path(p if p.is_absolute() else step_dir / p)
    return hashes


def _clear(step_dir: Path) -> None:
    for child in step_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _why_rerun(old: dict | None, config_hash: str, inputs: dict[str, str]) -> str:
    """Why a step folder with content is emptied and the step run again (for the log)."""
    if old is None:
        return "no step record"
    if old.get("config_hash") != config_hash:
        return "config changed"
    before = old.get("inputs") or {}
    if before != inputs:
        changed = sorted(k for k in set(inputs) | set(before) if inputs.get(k) != before.get(k))
        return "inputs changed: " + ", ".join(changed)
    return "its output files changed"


def _run_one(step: Step, ctx: StepContext, record: dict) -> StepOutcome:
    """Run one step with its ``running`` record written first and ``done`` after (``record``
    gains the outputs and their hashes)."""
    record_path = ctx.step_dir / STEP_RECORD
    write_record(record_path, record)
    t0 = time.perf_counter()
    outputs = step.func(ctx) or {}
    seconds = time.perf_counter() - t0
    hashes = _output_hashes(step, ctx.step_dir, outputs)
    record.update(status="done", outputs=outputs, output_hashes=hashes, finished=_now(), seconds=round(seconds, 2))
    write_record(record_path, record)
    log.info("step %s: finished in %.1f s", step.name, seconds)
    return StepOutcome(step.name, "resumed" if ctx.resume else "ran", seconds, outputs, ctx.step_dir)


def run_steps(
    steps: Sequence[Step], run_dir: str | os.PathLike, *, on_step: Callable[[StepOutcome], None] | None = None
) -> list[StepOutcome]:
    """Run ``steps`` in order in ``run_dir``; returns one :class:`StepOutcome` per step.

    Raises whatever a step raises (its record stays ``running``, so the next call resumes
    it), and OutputError when the run folder cannot be written.
    """
    run = Path(run_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {run}: {exc.strerror or exc}; choose another --out") from exc
    done: dict[str, dict] = {}
    out_hashes: dict[str, dict[str, str]] = {}
    outcomes: list[StepOutcome] = []
    for step in steps:
        missing = [d for d in step.depends if d not in done]
        if missing:
            raise ValueError(f"step {step.name} depends on {missing}, which do not run before it")
        step_dir = run / step.name
        step_dir.mkdir(parents=True, exist_ok=True)
        record_path = step_dir / STEP_RECORD
        inputs = {k: hash_path(v) for k, v in step.inputs.items()}
        inputs.update({f"{d}.{k}": h for d in step.depends for k, h in sorted(out_hashes[d].items())})
        config_hash = hash_config(step.config)
        fingerprint = hash_config({"config": config_hash, "inputs": inputs, "cxr_cad": __version__})
        old = _read_record(record_path)
        if old and old.get("fingerprint") == fingerprint and old.get("status") == "done":
            outputs = old.get("outputs") or {}
            if _output_hashes(step, step_dir, outputs) == old.get("output_hashes"):
                log.info("step %s: up to date (config and inputs unchanged), skipped", step.name)
                done[step.name] = outputs
                out_hashes[step.name] = old["output_hashes"]
                outcome = StepOutcome(step.name, "skipped", 0.0, outputs, step_dir)
                outcomes.append(outcome)
                if on_step:
                    on_step(outcome)
                continue
            log.info("step %s: its output files changed since it finished; running it again", step.name)
        resume = bool(old and old.get("fingerprint") == fingerprint and old.get("status") == "running")
        if not resume and any(step_dir.iterdir()):
            log.info(
                "step %s: %s; starting it again in an emptied folder", step.name, _why_rerun(old, config_hash, inputs)
            )
            _clear(step_dir)
        elif resume:
            log.info("step %s: resuming an interrupted run", step.name)
        record: dict[str, Any] = {
            "step": step.name,
            "status": "running",
            "config": step.config,
            "config_hash": config_hash,
            "inputs": inputs,
            "fingerprint": fingerprint,
            "started": _now(),
            "resumed": resume,
        }
        outcome = _run_one(step, StepContext(step.name, run, step_dir, step.config, dict(done), resume), record)
        done[step.name] = outcome.outputs
        out_hashes[step.name] = record["output_hashes"]
        outcomes.append(outcome)
        if on_step:
            on_step(outcome)
    return outcomes
