"""Clinical metric reports: ``report.html`` (self-contained), ``report.pdf``, ``metrics.json``,
``predictions.csv`` and the figures as SVG files, all in one folder.

The report computes no statistics of its own (everything comes from :mod:`cxr_cad.metrics`);
HTML and PDF are drawn from one document model whose numbers are formatted from the values
written to ``metrics.json``. Patient identifiers (patient ID, file paths, study UIDs) are
written only with ``ReportOptions(include_identifiers=True)``.

Typical use::

    from cxr_cad.report import ReportOptions, write_report
    options = ReportOptions(positive_class="PNEUMONIA", threshold=0.5, n_bootstrap=2000)
    result = write_report(predictions_df, "report/", options, model_info=info)
"""

from __future__ import annotations

from cxr_cad.explain.gradcam import GradcamSource
from cxr_cad.report.cohort import ReportResult, model_info_from_bundle, write_report
from cxr_cad.report.options import ReportOptions

__all__ = ["write_report", "ReportResult", "ReportOptions", "GradcamSource", "model_info_from_bundle"]
