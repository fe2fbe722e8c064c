"""Patient identity of PNG/JPEG images: named file-name (or path) patterns of the public chest
radiograph collections, detection of the one a cohort follows, and the warning when too few
names match.

DICOM files carry (0010,0020) Patient ID; PNG/JPEG files carry nothing, so their patient id
comes from the file name or the folder. An image whose name no pattern matches counts as its
own patient (its file stem), which puts one patient's images on both sides of a split when the
pattern is wrong: :func:`patient_id_rule` says so (``warning``) whenever fewer than
:data:`MIN_MATCHED_FRACTION` of the names match, naming the shipped patterns that would.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from cxr_cad.errors import ConfigError, UsageError

__all__ = [
    "KERMANY_PATTERN",
    "MIN_MATCHED_FRACTION",
    "PATIENT_PATTERNS",
    "PatientPattern",
    "RASTER_SUFFIXES",
    "assign_patient_ids",
    "check_given_pattern",
    "patient_id_from_path",
    "pattern_counts",
    "resolve_patient_pattern",
]

#: Kermany (Guangzhou pediatric pneumonia) names: ``IM-0115-0001.jpeg`` -> ``IM-0115``,
#: ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``, ``person1000_bacteria_2931.jpeg`` ->
#: ``person1000``.
KERMANY_PATTERN = r"^((?:[A-Za-z]+\d*-)?IM-\d+|person\d+)(?=[-_.])"
#: Below this fraction of PNG/JPEG names matched, ingest warns (screen and ``ingest.json``).
MIN_MATCHED_FRACTION = 0.9
#: File-name endings of PNG/JPEG files (used to check a given pattern before the scan).
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The pattern name that takes the file stem as the patient id (one image per patient).
STEM = "stem"
_EXT = r"\.(?i:png|jpe?g)$"


@dataclass(frozen=True)
class PatientPattern:
    """A patient-id rule for PNG/JPEG files.

    Attributes:
        name: the name ``--patient-id-pattern`` takes (None: a regex the user gave).
        regex: searched in the file name, or (``on_path``) in the whole path with ``/``
            separators; its first group is the patient id. None for :data:`STEM`.
        on_path: search the path rather than the file name.
        example: one name and the id it gives (for help and messages).
    """

    name: str | None
    regex: str | None
    on_path: bool
    example: str = ""

    def compiled(self) -> re.Pattern[str] | None:
        return None if self.regex is None else re.compile(self.regex)

    @property
    def label(self) -> str:
        return self.name if self.name is not None else repr(self.regex)


#: The shipped patterns, in the order detection prefers them on a tie.
PATIENT_PATTERNS: dict[str, PatientPattern] = {
    "kermany": PatientPattern(
        "kermany", KERMANY_PATTERN, False, "person123_bacteria_456.jpeg -> person123, IM-0115-0001.jpeg -> IM-0115"
    ),
    "nih": PatientPattern("nih", r"^(\d{8})_\d{3}" + _EXT, False, "00000129_000.png -> 00000129 (ChestX-ray14)"),
    "chexpert": PatientPattern(
        "chexpert",
        r"(?:^|/)(patient\d+)/study\d+/view\d+_(?i:frontal|lateral)" + _EXT,
        True,
        "patient00001/study1/view1_frontal.jpg -> patient00001",
    ),
    "mimic": PatientPattern(
        "mimic",
        r"(?:^|/)p\d\d/p(\d{8})/s\d{8}/[^/]+" + _EXT,
        True,
        "p10/p10000032/s50414267/<dicom_id>.jpg -> 10000032 (MIMIC-CXR-JPG subject_id)",
    ),
}
_STEM_PATTERN = PatientPattern(STEM, None, False, "any name -> its stem (one image per patient)")


def resolve_patient_pattern(spec: str | None) -> PatientPattern | None:
    """The pattern ``--patient-id-pattern`` names: None (or ``auto``) = detect from the cohort
    (returns None); a shipped name (:data:`PATIENT_PATTERNS`, or ``stem``); else a regex,
    searched in the whole path when it contains ``/``, else in the file name.

    Raises ConfigError (exit 2): not a valid regex, or no capture group (without one a
    pattern such as ``P`` would give every file the same id, merging patients across folds)."""
    if spec is None or spec.strip().lower() == "auto":
        return None
    key = spec.strip().lower()
    if key in PATIENT_PATTERNS:
        return PATIENT_PATTERNS[key]
    if key == STEM:
        return _STEM_PATTERN
    try:
        compiled = re.compile(spec)
    except re.error as exc:
        raise ConfigError(
            f"--patient-id-pattern {spec!r} is not a valid regular expression ({exc}) nor a "
            f"pattern name ({', '.join(_names())})"
        ) from exc
    if compiled.groups < 1:
        raise ConfigError(
            f"--patient-id-pattern {spec!r} has no capture group; put the part of the file "
            r"name that is the patient id in parentheses, e.g. '^(P\d+)-', or name a pattern: " + ", ".join(_names())
        )
    return PatientPattern(None, spec, "/" in spec)


def _names() -> list[str]:
    return [*PATIENT_PATTERNS, STEM]


def _posix(path: str) -> str:
    return PurePath(os.path.abspath(path)).as_posix()


def patient_id_from_path(path: str, pattern: PatientPattern, compiled: re.Pattern[str] | None = None) -> str | None:
    """The patient id ``pattern`` gives the file at ``path``, or None when it does not match."""
    if pattern.regex is None:  # stem
        return PurePath(path).stem or None
    rx = compiled if compiled is not None else re.compile(pattern.regex)
    m = rx.search(_posix(path) if pattern.on_path else os.path.basename(path))
    return (m.group(1) or None) if m else None


def pattern_counts(paths: Sequence[str]) -> dict[str, int]:
    """How many of ``paths`` each shipped pattern matches (``{name: n}``, in preference order)."""
    out = {}
    for name, pat in PATIENT_PATTERNS.items():
        rx = pat.compiled()
        out[name] = sum(patient_id_from_path(p, pat, rx) is not None for p in paths)
    return out


def _matching(counts: dict[str, int], n: int, exclude: str | None = None) -> str:
    hits = [f"{k} ({v} of {n})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v and k != exclude]
    return ", ".join(hits) if hits else "none"


def check_given_pattern(pattern: PatientPattern | None, paths: Sequence[str]) -> None:
    """A pattern the user gave must match at least one of ``paths`` (PNG/JPEG files).

    Raises UsageError naming the shipped patterns that would match (and how many names each)."""
    if pattern is None or pattern.regex is None or not paths:
        return
    rx = pattern.compiled()
    if any(patient_id_from_path(p, pattern, rx) is not None for p in paths):
        return
    counts = pattern_counts(paths)
    where = "paths" if pattern.on_path else "file names"
    raise UsageError(
        f"--patient-id-pattern {pattern.label} matches none of the {len(paths)} PNG/JPEG {where} "
        f"(e.g. {os.path.basename(paths[0])}); shipped patterns that match: "
        f"{_matching(counts, len(paths), pattern.name)}. Name one of them, give a REGEX whose first "
        f"group is the patient id, or 'stem' for one image per patient"
    )


def assign_patient_ids(paths: Sequence[str], given: PatientPattern | None) -> tuple[list[str], dict[str, Any]]:
    """Patient ids of PNG/JPEG files and the record of how they were obtained.

    ``given`` None: the shipped pattern matching the most paths (none matches: file stems).
    Returns ``(ids, record)``; ``record`` has ``pattern`` (regex or None), ``pattern_name``,
    ``chosen`` (``given``/``detected``/``none matched``), ``raster_images``, ``from_pattern``,
    ``from_file_stem``, ``matched_fraction``, ``shipped_pattern_matches`` (``{name: n}``) and
    ``warning`` (text, or None when at least :data:`MIN_MATCHED_FRACTION` of names matched).

    Raises UsageError: a given pattern that matches none of ``paths``."""
    check_given_pattern(given, paths)
    counts = pattern_counts(paths)
    if given is not None:
        pattern: PatientPattern | None = given
        chosen = "given"
    else:
        best = max(counts, key=lambda k: counts[k]) if counts else None
        pattern = PATIENT_PATTERNS[best] if best is not None and counts[best] > 0 else None
        chosen = "detected" if pattern is not None else "none matched"
    rx = pattern.compiled() if pattern is not None else None
    ids: list[str] = []
    matched = 0
    for p in paths:
        pid = patient_id_from_path(p, pattern, rx) if pattern is not None else None
        if pid is None:
            ids.append(PurePath(p).stem or os.path.basename(p))
        else:
            ids.append(pid)
            matched += 1
    n = len(paths)
    fraction = matched / n if n else None
    record: dict[str, Any] = {
        "pattern": None if pattern is None else pattern.regex,
        "pattern_name": None if pattern is None else pattern.name,
        "chosen": chosen,
        "raster_images": n,
        "from_pattern": matched,
        "from_file_stem": n - matched,
        "matched_fraction": None if fraction is None else round(fraction, 4),
        "shipped_pattern_matches": counts,
        "warning": None,
    }
    if fraction is not None and fraction < MIN_MATCHED_FRACTION:
        which = "no shipped patient-id pattern" if pattern is None else f"patient-id pattern {pattern.label}"
        record["warning"] = (
            f"{which} matched {matched} of {n} PNG/JPEG file names ({fraction:.0%}); the other "
            f"{n - matched} images each count as their own patient (file stem), so one patient's images can "
            f"land on both sides of a split. Shipped patterns that match: "
            f"{_matching(counts, n, pattern.name if pattern else None)}. Give --patient-id-pattern NAME or "
            f"REGEX (first group = patient id), or 'stem' when every image is a different patient"
        )
    return ids, record
