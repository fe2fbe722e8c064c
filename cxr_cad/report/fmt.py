"""Number formatting and the two table block builders of the document model.

Every number a report shows is formatted here, once, from the values in ``metrics.json``;
missing or undefined values read ``not estimable``.
"""

from __future__ import annotations

import math
from typing import Any

NOT_ESTIMABLE = "not estimable"
DASH = "\u2013"  # en dash between the ends of an interval


def level(d: dict) -> str:
    """The confidence level as a label, e.g. ``95%`` (from ``settings.confidence_level``)."""
    return f"{100 * d['settings']['confidence_level']:g}%"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite_or_none(x: Any) -> float | None:
    """``float(x)`` when that is a finite number, else None."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_num(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``not estimable`` for null/NaN."""
    return f"{x:.{digits}f}" if _finite(x) else NOT_ESTIMABLE


def fmt_threshold(x: Any) -> str:
    """A threshold with 4 decimals, or 6 significant digits when 4 decimals would show 0.0000/1.0000."""
    if not _finite(x):
        return NOT_ESTIMABLE
    text = f"{x:.4f}"
    return f"{x:.6g}" if text in ("0.0000", "1.0000") and x not in (0.0, 1.0) else text


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A proportion in [0, 1] as a percentage, e.g. ``0.9123`` -> ``91.2%``."""
    return f"{100 * x:.{digits}f}%" if _finite(x) else NOT_ESTIMABLE


def fmt_interval(low: Any, high: Any, *, pct: bool = False, digits: int = 3) -> str:
    """``(low–high)``; percentages with one decimal when ``pct``."""
    if not (_finite(low) and _finite(high)):
        return "(CI not estimable)"
    sep = " to " if low < 0 else DASH  # "-0.031–0.435" would read as a range of negatives
    if pct:
        return f"({100 * low:.1f}{sep}{100 * high:.1f}%)"
    return f"({low:.{digits}f}{sep}{high:.{digits}f})"


def fmt_prop(d: dict | None) -> str:
    """A proportion dict ``{"value", "low", "high"}`` -> ``91.2% (87.1–94.4%)``."""
    if not d or not _finite(d.get("value")):
        return NOT_ESTIMABLE
    return f"{fmt_pct(d['value'])} {fmt_interval(d.get('low'), d.get('high'), pct=True)}"


def fmt_ratio(d: dict | None) -> str:
    """A likelihood ratio dict -> ``4.21 (3.10–5.72)``."""
    if not d or not _finite(d.get("value")):
        return NOT_ESTIMABLE
    return f"{d['value']:.2f} {fmt_interval(d.get('low'), d.get('high'), digits=2)}"


def fmt_auc(ci: dict | None) -> str:
    """An AucCI dict -> ``0.912 (0.871–0.944)``."""
    if not ci or not _finite(ci.get("auc")):
        return NOT_ESTIMABLE
    return f"{ci['auc']:.3f} {fmt_interval(ci.get('low'), ci.get('high'))}"


def fmt_p(p: Any) -> str:
    """A p-value: ``p = 0.012``, ``p < 0.001``."""
    if not _finite(p):
        return NOT_ESTIMABLE
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_k_n(d: dict | None) -> str:
    return f"{d['k']}/{d['n']}" if d and "k" in d and "n" in d else ""


def fmt_maybe_ci(x: Any, *, pct: bool) -> str:
    """A metric that may be a bare float or a dict with an interval (F1, balanced accuracy)."""
    if isinstance(x, dict):
        return fmt_prop(x) if pct else fmt_ratio(x)
    if not _finite(x):
        return NOT_ESTIMABLE
    return f"{fmt_pct(x) if pct else fmt_num(x)} (no CI)"


def category_key(col: str, value: str) -> tuple:
    """Display order of a category: age bands by age, '(missing)'/'unknown' last, else by name."""
    v = str(value)
    if v in ("(missing)", "unknown", ""):
        return (2, 0.0, v)
    if col == "age_band":
        digits = "".join(ch if ch.isdigit() or ch == "." else " " for ch in v).split()
        lo = -1.0 if v.startswith("<") else float(digits[0]) if digits else 1e9
        return (0, lo, v)
    return (1, 0.0, v)


def kv(rows: list[tuple[str, str]], caption: str = "") -> dict:
    """A two-column block (name, value)."""
    return {"kind": "kv", "caption": caption, "rows": [[k, v] for k, v in rows]}


def table(columns: list[str], rows: list[list[str]], caption: str = "", widths: list[float] | None = None) -> dict:
    """A table block with a header row; ``widths`` are relative column widths (PDF)."""
    return {
        "kind": "table",
        "caption": caption,
        "columns": columns,
        "rows": rows,
        "widths": widths or [1.0] * len(columns),
    }
