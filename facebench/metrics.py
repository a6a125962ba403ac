"""Face-verification metrics on scored pairs.

Every function takes one score per pair, where a HIGHER score means MORE
SIMILAR (same person), and a label per pair: 1/True for a genuine pair (same
person), 0/False for an impostor pair. Everything is vectorised numpy; the
only Python loop is over cross-validation folds.

Two decision rules appear, on purpose, as in the references they mirror:

* ROC-based metrics (`roc_curve`, `roc_auc_score`, `equal_error_rate`,
  `tar_at_far`) predict "same" when ``score >= threshold``, as scikit-learn.
* Accuracy-based metrics (`best_threshold`, `kfold_accuracy`) predict "same"
  when ``score > threshold``, as insightface's LFW-style verification.

`verification_report` is the single entry point for the rest of the project;
it also handles pairs without a valid model output.
"""

import math

import numpy as np

__all__ = [
    "roc_curve",
    "roc_auc_score",
    "equal_error_rate",
    "tar_at_far",
    "best_threshold",
    "kfold_accuracy",
    "far_key",
    "verification_report",
    "det_curve",
    "kfold_decisions",
    "bootstrap_ci",
    "mcnemar_test",
]


# ---------------------------------------------------------------- validation


def _as_1d(x, name, kinds="biuf"):
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    # An empty list comes back as float64, so only non-empty input is typed.
    if arr.size and arr.dtype.kind not in kinds:
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    return arr


def _check_lengths(**arrays):
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        got = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"{', '.join(lengths)} must have equal lengths; got {got}")


def _some(values, k=5):
    return np.unique(values)[:k].tolist()


def _as_scores(scores, *, finite=True):
    scores = _as_1d(scores, "scores").astype(float)
    bad = ~np.isfinite(scores)
    if finite and bad.any():
        raise ValueError(
            f"scores contain {int(bad.sum())} non-finite value(s) (NaN/inf); "
            "drop those pairs first (verification_report does this)"
        )
    return scores


def _as_labels(labels):
    labels = _as_1d(labels, "labels")
    if labels.dtype == bool:
        return labels
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        raise ValueError(
            f"labels must be 0/1 or bool; got {int(bad.sum())} other value(s), "
            f"e.g. {_some(labels[bad])}"
        )
    return labels == 1


def _as_folds(folds):
    folds = _as_1d(folds, "folds")
    if folds.dtype.kind == "f":
        bad = ~np.isfinite(folds) | (folds != np.round(folds))
        if bad.any():
            raise ValueError(
                f"folds must be integer-like; got {int(bad.sum())} non-integer "
                f"value(s), e.g. {_some(folds[bad])}"
            )
    return folds.astype(np.int64)


def _as_decisions(decisions):
    decisions = _as_1d(decisions, "decisions").astype(float)
    bad = ~(np.isin(decisions, (0, 1, -1)) | np.isnan(decisions))
    if bad.any():
        raise ValueError(
            "decisions must be 1 (same), 0 (different) or -1/NaN (invalid); "
            f"got {int(bad.sum())} other value(s), e.g. {_some(decisions[bad])}"
        )
    return decisions


def _check_pairs(scores, labels):
    scores, labels = _as_scores(scores), _as_labels(labels)
    _check_lengths(scores=scores, labels=labels)
    return scores, labels


def _check_far(far):
    if not (isinstance(far, (int, float, np.number)) and 0 < far <= 1):
        raise ValueError(f"far must be a number in (0, 1]; got {far!r}")
    return float(far)


# ----------------------------------------------------------------- ROC-based


def roc_curve(scores, labels):
    """Receiver operating characteristic at every distinct score.

    Same result as ``sklearn.metrics.roc_curve(labels, scores,
    drop_intermediate=False)``: a pair is predicted "same" when
    ``score >= threshold``.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person.
        Must be finite.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs. Both classes
        must be present.

    Returns
    -------
    fpr : ndarray of shape (n_thresholds,)
        False positive (false accept) rate at each threshold.
    tpr : ndarray of shape (n_thresholds,)
        True positive (true accept) rate at each threshold.
    thresholds : ndarray of shape (n_thresholds,)
        ``+inf`` (giving the point (0, 0)), then the distinct scores in
        decreasing order; ``n_thresholds = n_distinct_scores + 1``.

    Examples
    --------
    >>> fpr, tpr, thr = roc_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    >>> thr.tolist()
    [inf, 0.9, 0.8, 0.3, 0.1]
    """
    scores, labels = _check_pairs(scores, labels)
    n_pos = int(labels.sum())
    if n_pos in (0, len(labels)):
        raise ValueError(
            "roc_curve needs genuine (1) and impostor (0) pairs; got "
            f"{n_pos} genuine and {len(labels) - n_pos} impostor"
        )
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    # The last pair of each run of tied scores closes one threshold.
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.r_[0, np.cumsum(labels)[last]]
    fps = np.r_[0, last + 1] - tps
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, scores[last]]


def roc_auc_score(scores, labels):
    """Area under the ROC curve, by the trapezoid rule.

    Equals ``sklearn.metrics.roc_auc_score``: the probability that a random
    genuine pair outscores a random impostor pair, ties counting half.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.

    Returns
    -------
    auc : float
        In [0, 1]; higher is better.

    Examples
    --------
    >>> roc_auc_score([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    0.75
    """
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def equal_error_rate(scores, labels):
    """Rate at which false accepts equal false rejects.

    Along the ROC curve, ``FPR - FNR`` (with ``FNR = 1 - TPR``) never
    decreases, from -1 at (0, 0) to +1 at (1, 1). The EER is found by linear
    interpolation between the two adjacent ROC points where it changes sign
    (exact when a point has ``FPR == FNR``).

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.

    Returns
    -------
    eer : float
        In [0, 1]; lower is better.

    Examples
    --------
    >>> equal_error_rate([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    0.25
    """
    fpr, tpr, _ = roc_curve(scores, labels)
    gap = fpr - (1 - tpr)
    i = int(np.argmax(gap >= 0))  # >= 1, as gap[0] == -1
    step = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + step * (fpr[i] - fpr[i - 1]))


def tar_at_far(scores, labels, far):
    """True accept rate at a given false accept rate.

    The largest TPR over the ROC points whose FPR is at most `far`, without
    interpolation: it is conservative, the rate of a threshold one could
    actually have picked on these pairs.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.
    far : float
        Largest allowed false accept rate, in (0, 1].

    Returns
    -------
    tar : float
        In [0, 1]; higher is better.

    Examples
    --------
    >>> tar_at_far([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1], 0.5)
    0.6666666666666666
    """
    far = _check_far(far)
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(tpr[fpr <= far].max())


# ------------------------------------------------------------ accuracy-based


def _best_threshold(scores, labels):
    order = np.argsort(scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    distinct = scores[last]
    n_pos = int(labels.sum())
    # Correct calls when everything up to and including distinct[j] is "different".
    below_pos = np.cumsum(labels)[last]
    correct = np.r_[n_pos, (last + 1 - below_pos) + (n_pos - below_pos)]
    mids = distinct[:-1] / 2 + distinct[1:] / 2  # halves first: no overflow
    # Between adjacent floats the midpoint may round up onto the upper value.
    mids = np.where(mids < distinct[1:], mids, distinct[:-1])
    candidates = np.r_[-np.inf, mids, np.inf]
    return float(candidates[np.argmax(correct)])


def best_threshold(scores, labels):
    """Threshold with the best accuracy for the rule ``score > threshold``.

    The candidates are ``-inf``, the midpoints between consecutive distinct
    scores, and ``+inf``; they are scored at once with cumulative sums over
    the sorted scores. When several candidates reach the best accuracy, the
    smallest one is returned.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person.
        At least one pair.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs. One class
        alone is allowed (the threshold is then ``-inf`` or ``+inf``).

    Returns
    -------
    threshold : float
        Predict "same" when ``score > threshold``.

    Examples
    --------
    >>> best_threshold([0.1, 0.4, 0.4, 0.8], [0, 1, 0, 1])
    0.25
    """
    scores, labels = _check_pairs(scores, labels)
    if not len(scores):
        raise ValueError("best_threshold needs at least one pair; got 0")
    return _best_threshold(scores, labels)


def kfold_accuracy(scores, labels, folds):
    """Cross-validated verification accuracy, as insightface's LFW protocol.

    For each fold k (the distinct values of `folds`, sorted), the threshold
    from `best_threshold` on all pairs outside fold k is applied to the pairs
    of fold k with the rule ``score > threshold``.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.
    folds : array-like of shape (n_pairs,)
        Integer fold id per pair; at least 2 distinct ids.

    Returns
    -------
    accuracies : ndarray of shape (n_folds,)
        Accuracy on each held-out fold.
    thresholds : ndarray of shape (n_folds,)
        Threshold applied to each fold (may be ``-inf`` or ``+inf`` when the
        other folds hold one class only).

    Examples
    --------
    >>> acc, thr = kfold_accuracy([0.125, 0.625, 0.375, 0.25, 0.75, 0.5],
    ...                           [0, 1, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1])
    >>> acc.round(3).tolist(), thr.tolist()
    ([1.0, 0.667], [0.375, 0.5])
    """
    scores, labels = _check_pairs(scores, labels)
    folds = _as_folds(folds)
    _check_lengths(scores=scores, labels=labels, folds=folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"kfold_accuracy needs at least 2 folds; got {fold_ids.tolist()}")
    accuracies, thresholds = np.empty((2, len(fold_ids)))
    for k, fold in enumerate(fold_ids):
        test = folds == fold
        thresholds[k] = _best_threshold(scores[~test], labels[~test])
        accuracies[k] = np.mean((scores[test] > thresholds[k]) == labels[test])
    return accuracies, thresholds


# -------------------------------------------------------------------- report


def far_key(far):
    """Report key for TAR at a given FAR, e.g. ``"tar_at_far_1e-3"``.

    Parameters
    ----------
    far : float
        False accept rate in (0, 1], written with one significant digit
        (anything finer would be lost in the key, so it is refused).

    Returns
    -------
    key : str
        ``"tar_at_far_"`` followed by `far` as ``<digit>e<exponent>``.

    Examples
    --------
    >>> far_key(1e-3), far_key(0.05)
    ('tar_at_far_1e-3', 'tar_at_far_5e-2')
    """
    far = _check_far(far)
    mantissa, exponent = f"{far:.0e}".split("e")
    if float(f"{mantissa}e{exponent}") != far:
        raise ValueError(f"far must have one significant digit (e.g. 1e-3); got {far!r}")
    return f"tar_at_far_{mantissa}e{int(exponent)}"


def _kfold_summary(scores, labels, folds):
    if len(np.unique(folds)) < 2:
        return {"accuracy_mean": math.nan, "accuracy_std": math.nan,
                "fold_accuracies": [], "thresholds": []}
    accuracies, thresholds = kfold_accuracy(scores, labels, folds)
    return {
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),  # ddof=0, as insightface
        "fold_accuracies": accuracies.tolist(),
        "thresholds": thresholds.tolist(),
    }


def _roc_summary(scores, labels, fars):
    n_pos = int(labels.sum())
    if n_pos in (0, len(labels)):
        out = {"auc": math.nan, "eer": math.nan}
        return out | {far_key(far): math.nan for far in fars}
    out = {"auc": roc_auc_score(scores, labels), "eer": equal_error_rate(scores, labels)}
    return out | {far_key(far): tar_at_far(scores, labels, far) for far in fars}


def _flags(report, fars, n_imp_finite, n_finite, n_bad_decisions):
    flags = []
    for far in fars:
        if n_imp_finite and far * n_imp_finite < 1:
            flags.append(
                f"TAR@FAR={far_key(far)[len('tar_at_far_'):]} is not resolved: "
                f"{n_imp_finite} impostor pairs give a FAR floor of {report['far_floor']:.1e}"
            )
    if math.isnan(report["auc"]):
        flags.append("AUC, EER and TAR@FAR are undefined: the pairs with a finite "
                     "score do not hold both genuine and impostor pairs")
    if not report["fold_accuracies"]:
        flags.append("k-fold accuracy is undefined: the pairs with a finite score "
                     "fall in fewer than 2 folds")
    n_invalid = report["n_pairs"] - report["n_valid"]
    if n_invalid:
        flags.append(
            f"{n_invalid} of {report['n_pairs']} pairs have no valid output "
            f"({report['n_pairs'] - n_finite} non-finite scores, {n_bad_decisions} "
            f"invalid decisions); score metrics use only the {n_finite} pairs with "
            "a finite score"
        )
    return flags


def _hard_summary(decisions, labels):
    valid = np.isin(decisions, (0, 1))
    n_correct = int(np.sum(valid & (decisions == labels)))
    n_valid = int(valid.sum())
    return {
        "hard_accuracy": n_correct / n_valid if n_valid else math.nan,
        "hard_accuracy_all": n_correct / len(labels) if len(labels) else math.nan,
        "n_invalid_decisions": len(labels) - n_valid,
    }


def verification_report(scores, labels, folds, *, decisions=None, fars=(1e-2, 1e-3)):
    """All verification metrics for one model on one pair list.

    Pairs without a valid output (non-finite score, or invalid decision when
    `decisions` is given) lower `acquire_rate` and are never counted as
    "different". Score metrics (k-fold accuracy, AUC, EER, TAR@FAR,
    `far_floor`) use the pairs with a finite score; hard accuracies use the
    decisions alone. Undefined metrics are NaN rather than errors.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person;
        NaN when the model gave no valid output.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.
    folds : array-like of shape (n_pairs,)
        Integer fold id per pair, for `kfold_accuracy`.
    decisions : array-like of shape (n_pairs,), default=None
        The model's own answer: 1 (same), 0 (different), -1 or NaN (invalid).
    fars : sequence of float, default=(1e-2, 1e-3)
        False accept rates for TAR@FAR, each in (0, 1] with one significant
        digit (see `far_key`).

    Returns
    -------
    report : dict
        JSON-serialisable (plain floats, ints, lists, strings). Keys:
        ``n_pairs``, ``n_genuine``, ``n_impostor``, ``n_valid``,
        ``acquire_rate``, ``accuracy_mean``, ``accuracy_std`` (ddof=0),
        ``fold_accuracies``, ``thresholds``, ``auc``, ``eer``, one
        ``far_key(far)`` per far, ``far_floor`` (1 / finite-score impostor
        pairs), ``flags`` (list of warnings in words) and, with `decisions`,
        ``hard_accuracy`` (over valid decisions), ``hard_accuracy_all``
        (over all pairs, invalid counted wrong) and ``n_invalid_decisions``.

    Examples
    --------
    >>> r = verification_report([0.9, 0.8, float("nan"), 0.1], [1, 1, 0, 0],
    ...                         [0, 1, 0, 1], fars=(0.5,))
    >>> r["acquire_rate"], r["auc"], r["tar_at_far_5e-1"]
    (0.75, 1.0, 1.0)
    """
    scores, labels, folds = _as_scores(scores, finite=False), _as_labels(labels), _as_folds(folds)
    arrays = {"scores": scores, "labels": labels, "folds": folds}
    if decisions is not None:
        arrays["decisions"] = decisions = _as_decisions(decisions)
    _check_lengths(**arrays)
    keys = [far_key(far) for far in fars]
    if len(set(keys)) < len(keys):
        raise ValueError(f"fars must be distinct; got {list(fars)}")
    finite = np.isfinite(scores)
    decided = np.ones_like(finite) if decisions is None else np.isin(decisions, (0, 1))
    n_pairs, n_finite, n_genuine = len(scores), int(finite.sum()), int(labels.sum())
    n_valid, n_imp_finite = int(np.sum(finite & decided)), int(np.sum(finite & ~labels))
    report = {
        "n_pairs": n_pairs, "n_genuine": n_genuine, "n_impostor": n_pairs - n_genuine,
        "n_valid": n_valid, "acquire_rate": n_valid / n_pairs if n_pairs else math.nan,
        **_kfold_summary(scores[finite], labels[finite], folds[finite]),
        **_roc_summary(scores[finite], labels[finite], fars),
        "far_floor": 1 / n_imp_finite if n_imp_finite else math.nan,
    }
    report["flags"] = _flags(report, fars, n_imp_finite, n_finite, int(np.sum(~decided)))
    if decisions is not None:
        report |= _hard_summary(decisions, labels)
    return report


# ------------------------------------------------------ beyond the protocol


def det_curve(scores, labels):
    """Detection error trade-off: false accept rate against false reject rate.

    The ROC curve seen from its errors: ``frr = 1 - tpr`` at the same
    thresholds as `roc_curve` (a pair is accepted when ``score >= threshold``),
    so both curves of one run are drawn from the same points.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person.
        Must be finite.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs. Both classes
        must be present.

    Returns
    -------
    far : ndarray of shape (n_thresholds,)
        False accept rate at each threshold, non-decreasing.
    frr : ndarray of shape (n_thresholds,)
        False reject rate at each threshold, non-increasing.
    thresholds : ndarray of shape (n_thresholds,)
        As in `roc_curve`: ``+inf``, then the distinct scores, decreasing.

    Examples
    --------
    >>> far, frr, thr = det_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    >>> far.tolist(), frr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 0.0, 0.0])
    """
    fpr, tpr, thresholds = roc_curve(scores, labels)
    return fpr, 1 - tpr, thresholds


def kfold_decisions(scores, labels, folds):
    """Per-pair "same" decisions of the k-fold protocol of `kfold_accuracy`.

    Each pair is judged with the threshold learned on the other folds, so
    ``mean(kfold_decisions(...) == labels)`` over the pairs of one fold is
    that fold's accuracy. Used to compare two models pair by pair
    (`mcnemar_test`) on the same footing as the accuracy they report.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair, higher means more likely the same person.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.
    folds : array-like of shape (n_pairs,)
        Integer fold id per pair; at least 2 distinct ids.

    Returns
    -------
    decisions : ndarray of bool, shape (n_pairs,)
        True where the pair is judged "same" (``score > threshold``).

    Examples
    --------
    >>> kfold_decisions([0.125, 0.625, 0.375, 0.25, 0.75, 0.5],
    ...                 [0, 1, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]).tolist()
    [False, True, False, False, True, False]
    """
    _, thresholds = kfold_accuracy(scores, labels, folds)
    scores, folds = _as_scores(scores), _as_folds(folds)
    index = np.searchsorted(np.unique(folds), folds)
    return scores > thresholds[index]


def _kfold_mean(scores, labels, folds):
    return float(np.mean(kfold_accuracy(scores, labels, folds)[0]))


def _mean_correct(scores, labels, folds):
    return float(np.mean(scores == labels))


# Statistics `bootstrap_ci` knows by name: f(scores, labels, folds) -> float.
BOOTSTRAP_STATISTICS = {
    "kfold_accuracy": _kfold_mean,
    "decision_accuracy": _mean_correct,
    "auc": lambda s, y, f: roc_auc_score(s, y),
    "eer": lambda s, y, f: equal_error_rate(s, y),
}


def bootstrap_ci(scores, labels, folds=None, *, statistic="kfold_accuracy", n_resamples=1000, seed=0,
                 level=0.95):
    """Percentile bootstrap confidence interval of a verification statistic.

    Each resample draws pairs with replacement *within each stratum* of
    (fold, label) — or of label alone without `folds` — so every resample
    keeps the protocol's fold sizes and its genuine/impostor balance, and the
    k-fold protocol stays defined. For ``"kfold_accuracy"`` the whole
    protocol (thresholds learned on the other folds) is re-run on each
    resample. The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the resampled statistics.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair (finite), or for ``"decision_accuracy"`` the
        model's decision per pair (1 same, 0 different).
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.
    folds : array-like of shape (n_pairs,), default=None
        Integer fold id per pair; required by ``"kfold_accuracy"``.
    statistic : str or callable, default="kfold_accuracy"
        A name in ``BOOTSTRAP_STATISTICS`` (``"kfold_accuracy"``,
        ``"decision_accuracy"``, ``"auc"``, ``"eer"``) or a function
        ``f(scores, labels, folds) -> float``.
    n_resamples : int, default=1000
        Number of bootstrap resamples, at least 1.
    seed : int, default=0
        Seed of numpy's default generator: the same seed gives the same
        interval.
    level : float, default=0.95
        Confidence level, in (0, 1).

    Returns
    -------
    ci : dict
        ``estimate`` (the statistic on the pairs as given), ``low``, ``high``,
        ``level``, ``n_resamples`` and ``statistic`` (its name).

    Examples
    --------
    >>> r = bootstrap_ci([1, 1, 0, 0, 1, 0, 1, 0], [1, 1, 0, 0, 1, 1, 0, 0],
    ...                  statistic="decision_accuracy", n_resamples=200)
    >>> r["estimate"], r["low"] <= r["estimate"] <= r["high"]
    (0.75, True)
    """
    scores, labels = _check_pairs(scores, labels)
    name = statistic if isinstance(statistic, str) else getattr(statistic, "__name__", "statistic")
    if isinstance(statistic, str):
        if statistic not in BOOTSTRAP_STATISTICS:
            raise ValueError(f"statistic must be one of {sorted(BOOTSTRAP_STATISTICS)} or a callable; "
                             f"got {statistic!r}")
        statistic = BOOTSTRAP_STATISTICS[statistic]
    elif not callable(statistic):
        raise ValueError(f"statistic must be a name or a callable; got {statistic!r}")
    if folds is None:
        if name == "kfold_accuracy":
            raise ValueError("statistic 'kfold_accuracy' needs folds")
        folds = np.zeros(len(scores), np.int64)
    folds = _as_folds(folds)
    _check_lengths(scores=scores, labels=labels, folds=folds)
    if not len(scores):
        raise ValueError("bootstrap_ci needs at least one pair; got 0")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not (isinstance(level, (int, float, np.number)) and 0 < level < 1):
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(m) for m in _strata(folds, labels)]
    values = np.empty(n_resamples)
    # Resamples are drawn in chunks to bound memory (chunk × n_pairs indices).
    chunk = max(1, min(n_resamples, 2_000_000 // max(len(scores), 1)))
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        # Each row: one index array per stratum, drawn from that stratum only.
        idx = np.concatenate([s[rng.integers(0, len(s), (rows, len(s)))] for s in strata], axis=1)
        if statistic is _kfold_mean:
            values[start:start + rows] = _kfold_mean_resampled(scores, labels, folds, idx)
        else:
            values[start:start + rows] = [statistic(scores[i], labels[i], folds[i]) for i in idx]
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return {"statistic": name, "estimate": float(statistic(scores, labels, folds)), "low": float(low),
            "high": float(high), "level": float(level), "n_resamples": int(n_resamples)}


def _kfold_mean_resampled(scores, labels, folds, idx):
    """`kfold_accuracy`'s mean for each row of ``idx`` (resampled pair indices), vectorised.

    Equal to ``[_kfold_mean(scores[i], labels[i], folds[i]) for i in idx]``
    (the tests check it), but each resample is a column of pair
    multiplicities over the pairs sorted once, so no resample is sorted
    again: the same cumulative-sum scan as `_best_threshold`, on weights.
    Arrays are (pairs, resamples), so every reduction runs along contiguous rows.
    """
    rows, n = idx.shape
    counts = np.bincount((idx + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
    order = np.argsort(scores, kind="stable")
    s, y, f = scores[order], labels[order], folds[order]
    w = np.ascontiguousarray(counts[:, order].T, dtype=float)  # (n, rows)
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    distinct = s[starts]
    n_distinct = len(distinct)
    group = np.cumsum(np.r_[False, np.diff(s) != 0])  # distinct-score index of each sorted pair
    cols = np.arange(rows)
    wy = w * y[:, None]
    all_pos, all_w = np.add.reduceat(wy, starts, axis=0), np.add.reduceat(w, starts, axis=0)  # (n_distinct, rows)
    accuracies = []
    for fold in np.unique(folds):
        # Training weight per distinct score = all pairs' weight minus this fold's.
        test = f == fold
        g = group[test]
        fold_starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
        pos, tot = all_pos.copy(), all_w.copy()
        pos[g[fold_starts]] -= np.add.reduceat(wy[test], fold_starts, axis=0)
        tot[g[fold_starts]] -= np.add.reduceat(w[test], fold_starts, axis=0)
        neg = tot - pos
        n_pos = pos.sum(axis=0, keepdims=True)
        # Correct calls with everything up to distinct[j] called "different", after "all same".
        correct = np.r_[n_pos, np.cumsum(neg - pos, axis=0) + n_pos]
        best = np.argmax(correct, axis=0)  # first maximum: the smallest threshold, as _best_threshold
        # The best cut lies just above a training score (index best - 1) and below the next one.
        nxt = np.where(tot > 0, np.arange(n_distinct, dtype=np.int32)[:, None], np.int32(n_distinct))
        nxt = np.r_[np.minimum.accumulate(nxt[::-1], axis=0)[::-1], np.full((1, rows), n_distinct, np.int32)]
        hi = nxt[best, cols]
        lo_val = distinct[np.maximum(best - 1, 0)]
        hi_val = distinct[np.minimum(hi, n_distinct - 1)]
        mid = lo_val / 2 + hi_val / 2
        mid = np.where(mid < hi_val, mid, lo_val)
        threshold = np.where(best == 0, -np.inf, np.where(hi == n_distinct, np.inf, mid))
        right = (s[test][:, None] > threshold[None, :]) == y[test][:, None]
        accuracies.append(np.sum(w[test] * right, axis=0) / np.sum(w[test], axis=0))
    return np.mean(accuracies, axis=0)


def _strata(folds, labels):
    keys = folds * 2 + labels.astype(np.int64)
    return [keys == k for k in np.unique(keys)]


def _binomial_two_sided(k, n):
    """Exact two-sided p-value of k successes in n fair coin flips (min(1, 2 P[X <= min(k, n-k)]))."""
    from fractions import Fraction

    m = min(k, n - k)
    tail = Fraction(sum(math.comb(n, i) for i in range(m + 1)), 2 ** n)
    return float(min(Fraction(1), 2 * tail))


def mcnemar_test(correct_a, correct_b):
    """Exact McNemar test: do two models, judged on the same pairs, err equally often?

    Only the discordant pairs count: ``b`` pairs that A got right and B
    wrong, ``c`` the reverse. Under the null hypothesis each discordant pair
    is a fair coin flip, so the p-value is the exact two-sided binomial
    ``min(1, 2 * P[X <= min(b, c)])`` with ``X ~ Binomial(b + c, 1/2)``
    (the exact form of statsmodels' ``mcnemar(..., exact=True)``); it is 1
    when there is no discordant pair.

    Parameters
    ----------
    correct_a : array-like of shape (n_pairs,)
        1/True where model A's decision on the pair was right.
    correct_b : array-like of shape (n_pairs,)
        1/True where model B's decision on the same pair was right.

    Returns
    -------
    result : dict
        ``n_pairs``, ``both`` (both right), ``a_only``, ``b_only``,
        ``neither``, ``accuracy_a``, ``accuracy_b``, ``statistic``
        (``min(a_only, b_only)``) and ``pvalue``.

    Examples
    --------
    >>> r = mcnemar_test([1, 1, 1, 1, 0, 1], [1, 0, 0, 0, 0, 1])
    >>> r["a_only"], r["b_only"], r["pvalue"]
    (3, 0, 0.25)
    """
    a, b = _as_labels_named(correct_a, "correct_a"), _as_labels_named(correct_b, "correct_b")
    _check_lengths(correct_a=a, correct_b=b)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = len(a)
    return {"n_pairs": n, "both": int(np.sum(a & b)), "a_only": a_only, "b_only": b_only,
            "neither": int(np.sum(~a & ~b)), "accuracy_a": float(a.mean()) if n else math.nan,
            "accuracy_b": float(b.mean()) if n else math.nan, "statistic": min(a_only, b_only),
            "pvalue": _binomial_two_sided(a_only, a_only + b_only) if a_only + b_only else 1.0}


def _as_labels_named(x, name):
    arr = _as_1d(x, name)
    if arr.dtype == bool:
        return arr
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise ValueError(f"{name} must be 0/1 or bool; got {int(bad.sum())} other value(s), "
                         f"e.g. {_some(arr[bad])}")
    return arr == 1
