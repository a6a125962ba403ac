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
