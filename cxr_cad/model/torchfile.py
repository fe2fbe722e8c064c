"""Reading torch files safely: ``torch.load(weights_only=True)`` behind a CRC check, with errors
that name the file and never echo torch's advice to load a file unsafely."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from cxr_cad.errors import WeightsError
from cxr_cad.model.integrity import check_zip_crc

__all__ = ["torch_load_file"]


def torch_load_file(path: str | os.PathLike[str], *, what: str, error: type[Exception] = WeightsError) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Before loading, a zip-format file's entries are checked against their CRC-32s
    (:func:`cxr_cad.model.integrity.check_zip_crc`; ``torch.load`` does not check them). A
    file that holds pickled Python objects is refused with a plain sentence saying so
    (torch's own message goes on to explain how to load it unsafely, which we never do).

    Raises:
        ``error``: not a readable torch file (corrupt, truncated, or not plain data).
    """
    check_zip_crc(path, what, error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message goes on with advice to re-run torch.load unsafely: never echo it
        text = str(exc)
        m = re.search(r"GLOBAL ([\w.]+)", text)
        if m:
            raise error(
                f"{path}: not a readable {what}: refused, it is not plain data; it holds pickled "
                f"Python objects (it references {m.group(1)}), which cxr_cad never loads because "
                "loading them can run code. Use a file written by cxr-cad, or a plain tensor "
                "state dict"
            ) from None
        if "weights only load failed" in text.lower() or "weights_only" in text:
            raise error(
                f"{path}: not a readable {what}: refused, it is not a plain-data torch file "
                "(corrupt, truncated, or pickled Python objects that cxr_cad never loads)"
            ) from None
        raise error(
            f"{path}: not a readable {what} (corrupt, truncated, or not a torch file): {_first_line(exc)}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise error(
            f"{path}: not a readable {what} (corrupt, truncated, or not a torch file saved with "
            f"plain types): {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
