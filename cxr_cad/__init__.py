"""cxr_cad: chest-radiograph computer-aided classification.

DICOM/PNG/JPEG ingestion into manifests, MONAI transforms, a transfer-learned
ResNet18, patient-grouped cross-validation, ROC statistics and clinical reports.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("cxr_cad")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
