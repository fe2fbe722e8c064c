"""Fixed report text: intended use, limitations and the Methods paragraphs."""

from __future__ import annotations

INTENDED_USE = (
    "Intended use: to measure, for research, how well a chest-radiograph classification model "
    "separates the two classes on a labelled cohort, and to document that measurement so it can "
    "be repeated. The numbers describe this cohort only."
)

LIMITATIONS = (
    "Limitations: research use only. This software is not a medical device and not a diagnostic "
    "device; its output must not be used to diagnose, treat or triage patients. Performance "
    "depends on the population, equipment and labelling of the cohort: numbers from one hospital "
    "or data set need not hold at another. Labels are taken as given and may contain errors. "
    "Grad-CAM heatmaps show which image regions influenced the score, not where disease is."
)


def methods_paragraphs(d: dict) -> list[str]:
    """The Methods text, with the settings actually used for this report."""
    s = d["settings"]
    level = f"{100 * s['confidence_level']:g}%"
    pos, neg = d["positive_class"], d["negative_class"]
    parts = [
        _scores_paragraph(d),
        _intervals_paragraph(s, level, pos, neg),
        f"Calibration. The Brier score is the mean squared difference between score and outcome (0/1). "
        f"The reliability diagram and the expected calibration error use {s['n_calibration_bins']} "
        "equal-width probability bins; ECE is the image-weighted mean absolute gap between the observed "
        "fraction of positives and the mean score in each bin. Brier and ECE have percentile intervals from "
        f"{s['n_bootstrap']} image resamples. The calibration slope is the coefficient of a logistic "
        "regression of the outcome on logit(score) (1 = ideal); the intercept is fitted with the slope fixed "
        "at 1 (calibration-in-the-large, 0 = ideal).",
        "Clinical utility. The decision curve (Vickers & Elkin 2006) gives the net benefit TP/n - FP/n x "
        "pt/(1 - pt) of acting on score >= pt, against acting on everyone and on no one. PPV and NPV at other "
        "prevalences follow from the fixed operating point's sensitivity and specificity (Bayes' rule), with "
        "logit intervals (Mercaldo et al. 2007). The precision-recall curve and its area (average precision) "
        "come from scikit-learn.",
        "Subgroups. The same statistics are computed within each view position, sex, age band and "
        "manufacturer recorded in the image headers; a subgroup with one class only is 'not estimable'. "
        "Missing values form their own group. Subgroup results are not corrected for multiplicity; subgroups "
        "under 30 images or 10 of a class are flagged.",
    ]
    if d.get("cross_validation") and d["cross_validation"].get("folds"):
        parts.append(
            "Cross-validation. Every image was scored by the model that did not see its patient "
            "in training (folds grouped by patient). The pooled out-of-fold scores give the "
            "main ROC and tables; per-fold ROC curves are averaged vertically on a common "
            "false-positive-rate grid, with a band of the mean +/- 1 SD across folds. The "
            "per-fold AUC spread is the sample SD. Where each fold has its own threshold (chosen "
            "on that fold's training data only), per-fold metrics are given at that threshold, "
            "with their mean +/- SD across folds."
        )
    if d.get("comparison"):
        parts.append(
            "Model comparison. Both models score the same images; the difference of their AUCs "
            "is tested with DeLong's paired test (two-sided), which accounts for the correlation "
            "between the two AUCs on the same cases."
        )
    parts.append(
        "Privacy. The report, metrics.json and the figures carry no patient name, patient ID, birth date, "
        "accession number, study UID or file path; images are named by their row in predictions.csv, which "
        "holds patient IDs and paths only when identifiers were asked for (--include-identifiers)."
    )
    parts.append(
        "All statistics come from the cxr_cad.metrics module; the numbers in this report, its "
        "PDF and metrics.json are formatted from the same values."
    )
    return parts


def _scores_paragraph(d: dict) -> str:
    """How scores become decisions, and the thresholds used."""
    pos, neg = d["positive_class"], d["negative_class"]
    names = [o["name"] for o in d["operating_points"]]
    model_thr = next((o for o in d["operating_points"] if o["name"] == "model"), None)
    used = []
    if model_thr:
        used.append(
            "the fixed threshold "
            + ((d.get("threshold_provenance") or {}).get("text") or f"{model_thr['threshold']:.4f}")
        )
    if "folds" in names:
        used.append(
            "each cross-validation fold's own threshold (every image is decided at the threshold of "
            "the fold model that scored it, chosen on that fold's training data only)"
        )
    if "youden" in names:
        used.append(
            "the Youden threshold, the observed score that maximises sensitivity + specificity - 1 "
            "on this same cohort (ties go to the higher threshold); because it is chosen on the data "
            "it is evaluated on, its numbers are optimistic"
        )
    return (
        f"Scores and decisions. Each image's score is the model's probability of {pos} (softmax output). "
        f"An image is called {pos} when score >= threshold, otherwise {neg}. Thresholds used: "
        + ("; ".join(used) or "none could be evaluated")
        + "."
        + ("" if model_thr else " No model threshold was given.")
    )


def _intervals_paragraph(s: dict, level: str, pos: str, neg: str) -> str:
    """The confidence intervals: which method for which statistic, with the settings used."""
    return (
        f"Confidence intervals ({level}; every interval in this report is a {level} interval). Accuracy, "
        "class accuracy, sensitivity, specificity, PPV and "
        "NPV are proportions of images with Wilson score intervals. Class accuracy is the fraction of "
        f"images of that class called correctly (for {pos} it equals sensitivity, for {neg} "
        "specificity). Likelihood ratios use the log method (Simel 1991). Balanced accuracy "
        "has a MOVER interval combining the Wilson intervals of sensitivity and specificity (Newcombe "
        f"1998); F1 has a percentile interval from {s['n_bootstrap']} stratified bootstrap resamples (seed "
        f"{s['bootstrap_seed']}). The AUC is the Mann-Whitney estimate (ties count one half) with three "
        "intervals: DeLong's (1988) variance with a normal approximation on the logit scale (primary: in a "
        "simulation with 10 positive and 40 negative images at AUC 0.95 its measured coverage of a nominal "
        "95% interval was 0.93, against 0.81 for the untransformed Wald interval clipped at 1; "
        "benchmarks/auc_ci_coverage.py), the same Wald interval untransformed (marked when clipped), and the "
        f"percentile interval of {s['n_bootstrap']} stratified bootstrap resamples (positives and negatives "
        f"resampled separately, random seed {s['bootstrap_seed']}). These image-level intervals are primary. "
        "Images of one patient are not independent, so a patient cluster bootstrap (patients resampled with "
        "replacement, all their images kept) gives patient-level intervals for AUC, sensitivity and "
        "specificity beside them. Zero-width intervals (a perfect split, an F1 of 0 or 1, a single case of a "
        "class) are flagged: the uncertainty is not zero, the data cannot show it."
    )
