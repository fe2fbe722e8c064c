"""Site adaptation of a trained bundle (``cxr-cad adapt``; docs/adaptation.md): the ladder
threshold -> recalibrate -> head -> finetune, learned from a few labelled site images, each
writing a child bundle with its provenance and a parent-vs-child comparison.

Modules: :mod:`~cxr_cad.adaptation.site` (which site rows, what is excluded from evaluation),
:mod:`~cxr_cad.adaptation.methods` (the cheap methods on cached parent scores),
:mod:`~cxr_cad.adaptation.child` (child bundle, provenance, comparison). The orchestration
(scoring, fine-tuning through the training API) is :func:`cxr_cad.api.adapt`.
"""

from cxr_cad.adaptation.child import compare, comparison_markdown, head_weights, model_with_head, save_child
from cxr_cad.adaptation.methods import (
    METHODS,
    Adapted,
    adapt_head,
    adapt_recalibrate,
    adapt_threshold,
    head_probability,
    parent_policy,
)
from cxr_cad.adaptation.site import SiteSplit, exclude_site, site_table, split_site

__all__ = [
    "METHODS",
    "Adapted",
    "SiteSplit",
    "adapt_head",
    "adapt_recalibrate",
    "adapt_threshold",
    "compare",
    "comparison_markdown",
    "exclude_site",
    "head_probability",
    "head_weights",
    "model_with_head",
    "parent_policy",
    "save_child",
    "site_table",
    "split_site",
]
