"""The exception family and the rejection reason codes. Nothing else.

One error type per kind of fault, whichever module or entry point (CLI flag, YAML file,
Python API) finds it:

=========================  ==================================================  =========
fault                      type                                                CLI exit
=========================  ==================================================  =========
a setting has a bad value  :class:`ConfigError` (lists every problem, with      2
                           its location: ``optim.lr``, ``--lr``)
a command is used wrongly  :class:`UsageError` (no input, conflicting options)  2
a table fails validation   :class:`ManifestError` (manifest, labels CSV)        2
a model bundle is unusable :class:`BundleError`                                 1
initial weights cannot be  :class:`WeightsError` (download, hash, shape)        1
obtained or do not fit
an output cannot be        :class:`OutputError`                                 1
written
an optional extra is not   :class:`MissingExtraError` (names the ``pip          1
installed                  install`` command)
one input file is refused  :class:`RejectedFile` (a :class:`Reason` code);      --
                           batch code records it and goes on
=========================  ==================================================  =========

A value the user chose is never reported as a bare ``ValueError``/``TypeError``. The library
raises; only the CLI prints and chooses exit codes (any other :class:`CxrCadError` exits 1
with a one-line reason).
"""

from __future__ import annotations

from enum import Enum
from os import PathLike


class Reason(str, Enum):
    """Stable reason codes for a file that was not accepted (``rejected.csv``)."""

    NOT_DICOM = "NOT_DICOM"  # neither DICOM nor a supported PNG/JPEG
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"  # an image format we do not read
    EMPTY_FILE = "EMPTY_FILE"  # zero bytes
    UNREADABLE = "UNREADABLE"  # I/O error, permission, truncated header
    NO_PIXEL_DATA = "NO_PIXEL_DATA"  # DICOM without (7FE0,0010) Pixel Data
    NOT_AN_IMAGE_SOP_CLASS = "NOT_AN_IMAGE_SOP_CLASS"  # SR, PR, RT, KO, ...
    MULTI_FRAME = "MULTI_FRAME"  # (0028,0008) Number of Frames > 1
    UNSUPPORTED_MODALITY = "UNSUPPORTED_MODALITY"  # (0008,0060) Modality not in the accepted set
    LATERAL_VIEW = "LATERAL_VIEW"  # (0018,5101) View Position LL/RL/LAT with a frontal-only model
    UNSUPPORTED_PHOTOMETRIC = "UNSUPPORTED_PHOTOMETRIC"  # e.g. PALETTE COLOR, YBR for a CXR
    DECODE_FAILED = "DECODE_FAILED"  # pixel data could not be decoded
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"  # declared decoded size above the limit (decompression bomb)
    CONSTANT_IMAGE = "CONSTANT_IMAGE"  # decoded image has a single value
    DUPLICATE_SOP_INSTANCE = "DUPLICATE_SOP_INSTANCE"  # second file with a SOP Instance UID already seen
    DUPLICATE_CONTENT = "DUPLICATE_CONTENT"  # byte-identical copy of a file already accepted
    NO_LABEL = "NO_LABEL"  # evaluate: an image the labels file gives no label for
    INTERNAL_ERROR = "INTERNAL_ERROR"  # a bug in cxr_cad; the detail carries the exception
    # An image listed by a DICOMweb archive that could not be fetched (retried on the next run):
    NETWORK_ERROR = "NETWORK_ERROR"  # connection refused/reset, time-out, DNS, TLS: after the retries
    FETCH_FAILED = "FETCH_FAILED"  # the archive answered with an HTTP error status (after retries)
    NOT_FOUND_IN_ARCHIVE = "NOT_FOUND_IN_ARCHIVE"  # listed by QIDO-RS, gone by the time WADO-RS asked (404)

    def __str__(self) -> str:  # so f"{reason}" gives the bare code
        return self.value


#: Longest message an error carries (a value quoted from a hostile file must not become
#: a 39 MB message); longer ones are cut with a note.
MAX_MESSAGE_CHARS = 2000
#: Problems listed by a :class:`ProblemListError`; the rest are counted.
MAX_PROBLEMS = 50


def cap_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with how much was cut."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... [{len(text) - limit} more characters cut]"


class CxrCadError(Exception):
    """Base class of every error cxr_cad raises on purpose."""


class UsageError(CxrCadError):
    """A bad argument, option, config or input list. The CLI exits with code 2."""


class ProblemListError(UsageError):
    """A usage error that carries every problem found, not just the first."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [problems]
        problems = [cap_message(p, MAX_MESSAGE_CHARS // 4) for p in problems]
        total = len(problems)
        if len(problems) > MAX_PROBLEMS:
            problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = f"{where}{self.problems[0]}"
        else:
            msg = f"{where}{total} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(cap_message(msg))


class ConfigError(ProblemListError):
    """A config or workflow file that cannot be honoured. Lists every problem."""


class ManifestError(ProblemListError):
    """A manifest or labels table that fails validation. Lists every problem."""


class BundleError(CxrCadError):
    """A model bundle that is missing, corrupt, or asks for something this code cannot honour."""


class WeightsError(CxrCadError):
    """Initial weights that cannot be obtained or do not fit the model."""


class OutputError(CxrCadError):
    """An output folder or file that cannot be written."""


class MissingExtraError(CxrCadError):
    """An optional dependency is not installed; the message says which extra to install."""


class RejectedFile(CxrCadError):
    """One input file is not accepted. Carries a stable :class:`Reason` code.

    ``detail`` is a human sentence that says what was found and, where there is
    one, what to do about it.
    """

    def __init__(self, reason: Reason, detail: str, path: str | PathLike | None = None):
        self.reason = Reason(reason)
        self.detail = cap_message(detail, MAX_MESSAGE_CHARS // 2)  # decoder texts can quote data
        self.path = None if path is None else str(path)
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}[{self.reason.value}] {self.detail}")
