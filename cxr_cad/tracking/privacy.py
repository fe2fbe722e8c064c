"""What leaves the machine through tracking: tables without identifiers unless asked.

Without ``--include-identifiers`` every CSV artifact (``val_predictions.csv``,
``oof_predictions.csv``, ``folds.csv``, a report's tables) is uploaded without the
:data:`TRACKING_IDENTIFIERS` columns, and a row's own identifier values are replaced by
``[removed]`` in its other cells (a path quoted in a rejection's ``detail``, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_cad.core.columns import IDENTIFIER_COLUMNS

if TYPE_CHECKING:  # pandas is imported where a table is stripped: the CLI's cheap checks stay cheap
    import pandas as pd

#: Columns never uploaded without ``--include-identifiers``: the report's identifier list
#: (patient id and name, path, study/series UIDs, accession number) plus the SOP Instance UID.
TRACKING_IDENTIFIERS: tuple[str, ...] = (*IDENTIFIER_COLUMNS, "sop_instance_uid")


def strip_identifiers(table: pd.DataFrame, columns: Sequence[str] = TRACKING_IDENTIFIERS) -> pd.DataFrame:
    """``table`` without the identifier ``columns``; a row's own identifier values (4 characters
    or more) are replaced by ``[removed]`` in its other text cells."""
    ids = [c for c in table.columns if c in columns]
    out = table.drop(columns=ids)
    if not ids or out.empty:
        return out
    row_values = [
        sorted({v for v in row if isinstance(v, str) and len(v) >= 4}, key=len, reverse=True)
        for row in table[ids].itertuples(index=False)
    ]
    for c in out.columns:
        if out[c].dtype != object:
            continue
        cells = out[c].tolist()
        for i, values in enumerate(row_values):
            cell = cells[i]
            if isinstance(cell, str) and any(v in cell for v in values):
                for v in values:
                    cell = cell.replace(v, "[removed]")
                cells[i] = cell
        out[c] = cells
    return out


def strip_csv(src: Path, dst: Path, columns: Sequence[str] = TRACKING_IDENTIFIERS) -> None:
    """Write the CSV ``src`` to ``dst`` through :func:`strip_identifiers`."""
    import pandas as pd

    table = pd.read_csv(src, dtype=str, keep_default_na=False)
    strip_identifiers(table, columns).to_csv(dst, index=False)
