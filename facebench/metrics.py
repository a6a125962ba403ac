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
    "identity_clusters",
    "mcnemar_test",
    "holm_adjust",
    "binomial_ci",
    "auc_permutation_test",
    "false_accepts_at_far",
    "MIN_FALSE_ACCEPTS",
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


# Doddington's rule of 30: an error rate is trusted only when it rests on at least 30 errors.
MIN_FALSE_ACCEPTS = 30


def false_accepts_at_far(scores, labels, far):
    """Impostor pairs at or above the threshold `tar_at_far` reads its TAR at.

    That threshold is the lowest score whose false accept rate is at most
    `far` (the largest TAR it allows). TAR@FAR rests on these false accepts:
    with fewer than `MIN_FALSE_ACCEPTS` (Doddington's rule of 30) the FAR it
    stands for is not measured well, and the report says "not resolved".

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
    labels : array-like of shape (n_pairs,)
    far : float
        In (0, 1].

    Returns
    -------
    n : int

    Examples
    --------
    >>> false_accepts_at_far([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1], 0.5)
    1
    """
    far = _check_far(far)
    fpr, _, _ = roc_curve(scores, labels)
    n_impostor = int(np.sum(~_as_labels(labels)))
    # fpr never decreases, so the allowed points come first and the last of them is the lowest threshold.
    return int(round(fpr[np.flatnonzero(fpr <= far)[-1]] * n_impostor))


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
    # The last maximum: of tied thresholds the strictest, as insightface (the first of its
    # increasing distance grid, i.e. the highest similarity cut-off).
    return float(candidates[len(correct) - 1 - np.argmax(correct[::-1])])


def best_threshold(scores, labels):
    """Threshold with the best accuracy for the rule ``score > threshold``.

    The candidates are ``-inf``, the midpoints between consecutive distinct
    scores, and ``+inf``; they are scored at once with cumulative sums over
    the sorted scores. When several candidates reach the best accuracy, the
    largest (strictest) one is returned, as insightface's ``calculate_roc``
    does: it scans distance thresholds upwards and keeps the first maximum.
    insightface's candidates are a fixed 0.01 grid of distances, these the
    midpoints between the scores. On distances that lie on its grid the two
    protocols' k-fold accuracies differ by less than 0.05 points
    (tests/test_metrics.py checks it against a re-implementation of
    insightface's protocol); on continuous distances the grid's coarseness
    alone moved its accuracy by up to 0.3 points in LFW-sized simulations.

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
    >>> best_threshold([0.125, 0.375, 0.375, 0.875], [0, 1, 0, 1])  # 0.25 and 0.625 tie
    0.625
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
        out = {"auc": math.nan, "eer": math.nan, "tar_false_accepts": {}, "tar_unresolved": []}
        return out | {far_key(far): math.nan for far in fars}
    out = {"auc": roc_auc_score(scores, labels), "eer": equal_error_rate(scores, labels)}
    accepts = {far_key(far): false_accepts_at_far(scores, labels, far) for far in fars}
    return out | {far_key(far): tar_at_far(scores, labels, far) for far in fars} | {
        "tar_false_accepts": accepts, "tar_unresolved": [k for k, n in accepts.items() if n < MIN_FALSE_ACCEPTS]}


def _flags(report, n_imp_finite, n_finite, n_bad_decisions, n_bad_scored):
    flags = [f"TAR@FAR={key[len('tar_at_far_'):]} is not resolved: {report['tar_false_accepts'][key]} of the "
             f"{n_imp_finite} impostor pairs lie at or above its threshold, and Doddington's rule of 30 asks "
             f"for at least {MIN_FALSE_ACCEPTS}" for key in report["tar_unresolved"]]
    if math.isnan(report["auc"]):
        flags.append("AUC, EER and TAR@FAR are undefined: the pairs with a finite "
                     "score do not hold both genuine and impostor pairs")
    if not report["fold_accuracies"]:
        flags.append("k-fold accuracy is undefined: the pairs with a finite score "
                     "fall in fewer than 2 folds")
    if n_finite < report["n_pairs"]:
        flags.append(f"{report['n_pairs'] - n_finite} of {report['n_pairs']} pairs have no score (no output, or "
                     f"an answer whose score is the answer itself and could not be read): score metrics use "
                     f"the other {n_finite}")
    if n_bad_decisions:
        flags.append(f"{n_bad_decisions} of {report['n_pairs']} pairs have no decision (no output, or an answer "
                     "that could not be read): they lower the acquire rate and count as wrong in own-answer "
                     f"accuracy over all pairs; the {n_bad_scored} of them with a score (log-odds read at the "
                     "answer's first token) stay in the score metrics")
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

    One policy for invalid answers, whatever produced them: a pair without a
    valid output (non-finite score, or invalid decision when `decisions` is
    given) lowers `acquire_rate` and is never counted as "different". Score
    metrics (k-fold accuracy, AUC, EER, TAR@FAR, `far_floor`) use every pair
    with a finite score: an MLLM answer the parser cannot read keeps the
    log-odds score read at its first token where the backend reads log-odds
    (``hf:``, and ``api:`` with log-probs), and has no score where the score
    is the answer itself (0–100 templates, ``api:`` without log-probs). Own-
    answer accuracies use the decisions alone: ``hard_accuracy_all`` counts an
    invalid answer as wrong, ``hard_accuracy`` leaves it out (read it next to
    the acquire rate). TAR@FAR is listed in ``tar_unresolved`` when fewer than
    `MIN_FALSE_ACCEPTS` impostor pairs lie at or above its threshold
    (`false_accepts_at_far`). Undefined metrics are NaN rather than errors.

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
        ``far_key(far)`` per far, ``tar_false_accepts`` (far key → count),
        ``tar_unresolved`` (far keys), ``far_floor`` (1 / finite-score impostor
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
    report["flags"] = _flags(report, n_imp_finite, n_finite, int(np.sum(~decided)), int(np.sum(~decided & finite)))
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


def _auc(scores, labels, folds):
    return roc_auc_score(scores, labels)


def _eer(scores, labels, folds):
    return equal_error_rate(scores, labels)


# Statistics `bootstrap_ci` knows by name: f(scores, labels, folds) -> float.
BOOTSTRAP_STATISTICS = {
    "kfold_accuracy": _kfold_mean,
    "decision_accuracy": _mean_correct,
    "auc": _auc,
    "eer": _eer,
}


def bootstrap_ci(scores, labels, folds=None, *, statistic="kfold_accuracy", clusters=None, n_resamples=1000,
                 seed=0, level=0.95):
    """Percentile bootstrap confidence interval of a verification statistic.

    Without `clusters`, each resample draws pairs with replacement *within
    each stratum* of (fold, label) — or of label alone without `folds` — so
    every resample keeps the protocol's fold sizes and its genuine/impostor
    balance. That treats pairs as independent, which they are not: pairs
    that share a person err together, and in simulations this pair bootstrap
    gave 0.6–0.9 times the true spread.

    With `clusters` (the person on each side of each pair, see
    `identity_clusters`), people are resampled instead (a two-way "vertex"
    bootstrap): each person who appears in two or more pairs is drawn with
    replacement, and a pair weighs the product of its people's draw counts
    (a genuine pair, one person: that person's count); a pair whose two
    people appear in no other pair is independent of the rest and is drawn
    as a unit of its own. People are drawn within two strata, those with a
    genuine pair and the others, so both kinds of pair stay in every
    resample. It errs on the wide side: in simulations of LFW-like designs
    its spread was 1.0–1.3 times the true spread (tests/test_metrics.py
    checks a small one). The fold of each pair is kept; a fold a resample
    draws no pair of is left out of that resample's k-fold mean.

    For ``"kfold_accuracy"`` the whole protocol (thresholds learned on the
    other folds) is re-run on each resample. The interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled
    statistics, over the resamples where the statistic is defined.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Similarity per pair (finite), or for ``"decision_accuracy"`` the
        model's decision per pair (1 same, 0 different).
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.
    folds : array-like of shape (n_pairs,), default=None
        Integer fold id per pair; required by ``"kfold_accuracy"``.
    statistic : str, callable or list of them, default="kfold_accuracy"
        A name in ``BOOTSTRAP_STATISTICS`` (``"kfold_accuracy"``,
        ``"decision_accuracy"``, ``"auc"``, ``"eer"``) or a function
        ``f(scores, labels, folds) -> float``; a list gives one interval per
        statistic, all from the same resamples (drawn once).
    clusters : array-like of shape (n_pairs, 2), default=None
        The person (an integer id) on each side of each pair, as
        `identity_clusters` gives; None resamples pairs.
    n_resamples : int, default=1000
        Number of bootstrap resamples, at least 1.
    seed : int, default=0
        Seed of numpy's default generator: the same seed gives the same
        interval.
    level : float, default=0.95
        Confidence level, in (0, 1).

    Returns
    -------
    ci : dict, or list of dicts for a list of statistics
        ``estimate`` (the statistic on the pairs as given), ``low``, ``high``,
        ``level``, ``n_resamples``, ``n_undefined`` (resamples where the
        statistic is undefined, e.g. AUC without impostor pairs), ``method``
        (``"pairs"`` or ``"identities"``) and ``statistic`` (its name).

    Examples
    --------
    >>> r = bootstrap_ci([1, 1, 0, 0, 1, 0, 1, 0], [1, 1, 0, 0, 1, 1, 0, 0],
    ...                  statistic="decision_accuracy", n_resamples=200)
    >>> r["estimate"], r["low"] <= r["estimate"] <= r["high"]
    (0.75, True)
    """
    scores, labels = _check_pairs(scores, labels)
    several = isinstance(statistic, (list, tuple))
    if several and not statistic:
        raise ValueError("statistic: the list is empty; give at least one statistic")
    names, statistics = [], []
    for stat in statistic if several else [statistic]:
        names.append(stat if isinstance(stat, str) else getattr(stat, "__name__", "statistic"))
        if isinstance(stat, str):
            if stat not in BOOTSTRAP_STATISTICS:
                raise ValueError(f"statistic must be one of {sorted(BOOTSTRAP_STATISTICS)} or a callable; "
                                 f"got {stat!r}")
            stat = BOOTSTRAP_STATISTICS[stat]
        elif not callable(stat):
            raise ValueError(f"statistic must be a name or a callable; got {stat!r}")
        statistics.append(stat)
    if folds is None:
        if "kfold_accuracy" in names:
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
    if clusters is None:
        draw = _pair_draw(folds, labels, rng)
    else:
        clusters = np.asarray(clusters)
        if clusters.shape != (len(scores), 2) or clusters.dtype.kind not in "iu":
            raise ValueError(f"clusters must be integer ids of shape (n_pairs, 2) = ({len(scores)}, 2); "
                             f"got shape {clusters.shape}, dtype {clusters.dtype}")
        draw = _identity_draw(clusters, labels, rng)
    values = np.empty((len(statistics), n_resamples))
    # Resamples are drawn in chunks to bound memory (chunk × n_pairs weights).
    chunk = max(1, min(n_resamples, 2_000_000 // max(len(scores), 1)))
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        counts = draw(rows)
        for k, stat in enumerate(statistics):
            values[k, start:start + rows] = _resampled(stat, scores, labels, folds, counts)
    out = []
    for name, stat, v in zip(names, statistics, values):
        defined = v[np.isfinite(v)]
        low, high = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2]) if len(defined) else (math.nan,) * 2
        out.append({"statistic": name, "estimate": float(stat(scores, labels, folds)), "low": float(low),
                    "high": float(high), "level": float(level), "n_resamples": int(n_resamples),
                    "n_undefined": int(n_resamples - len(defined)),
                    "method": "pairs" if clusters is None else "identities"})
    return out if several else out[0]


def _multiplicities(idx, n):
    """How often each of ``n`` pairs appears in each row of ``idx``: (rows, n) int64."""
    rows = len(idx)
    return np.bincount((idx + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)


def _pair_draw(folds, labels, rng):
    """Resamples of pairs within each (fold, label) stratum, as (rows, n_pairs) multiplicities."""
    strata = [np.flatnonzero(m) for m in _strata(folds, labels)]

    def draw(rows):
        idx = np.concatenate([s[rng.integers(0, len(s), (rows, len(s)))] for s in strata], axis=1)
        return _multiplicities(idx, len(labels))
    return draw


def _identity_draw(clusters, labels, rng):
    """Resamples of people (see `bootstrap_ci`), as (rows, n_pairs) whole-number pair weights."""
    people, side = np.unique(clusters, return_inverse=True)
    side = side.reshape(-1, 2)
    one = side[:, 0] == side[:, 1]  # a genuine pair: one person
    uses = np.bincount(side[:, 0], minlength=len(people)) + np.bincount(side[~one, 1], minlength=len(people))
    # A pair's units: its people who appear in another pair too; a pair with none is a unit itself.
    units = np.where(uses[side] >= 2, side, -1)
    units[one, 1] = -1
    alone = (units < 0).all(axis=1)
    units[alone, 0] = len(people) + np.arange(alone.sum())
    n_units = len(people) + int(alone.sum())
    genuine = np.zeros(n_units, bool)
    genuine[units[labels][units[labels] >= 0]] = True
    used = np.unique(units[units >= 0])
    strata = [used[genuine[used]], used[~genuine[used]]]

    def draw(rows):
        picks = np.concatenate([s[rng.integers(0, len(s), (rows, len(s)))] for s in strata if len(s)], axis=1)
        m = _multiplicities(picks, n_units)
        return np.where(units[:, 0] >= 0, m[:, units[:, 0]], 1) * np.where(units[:, 1] >= 0, m[:, units[:, 1]], 1)
    return draw


def _resampled(statistic, scores, labels, folds, counts):
    """The statistic on each row of ``counts`` (resamples, pairs): whole-number pair weights."""
    if statistic is _kfold_mean:
        return _kfold_mean_resampled(scores, labels, folds, counts=counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        if statistic is _mean_correct:
            return counts @ (scores == labels) / counts.sum(axis=1)
        if statistic is _auc:
            return _auc_resampled(scores, labels, counts)
    pairs = np.arange(len(scores))
    values = []
    for c in counts:
        i = np.repeat(pairs, c)
        one_class = labels[i].all() or not labels[i].any()
        values.append(math.nan if statistic is _eer and one_class else statistic(scores[i], labels[i], folds[i]))
    return values


def _auc_resampled(scores, labels, counts):
    """`roc_auc_score` for each row of ``counts``: the Mann–Whitney count on weights, ties half."""
    order = np.argsort(scores, kind="stable")
    s, y, c = scores[order], labels[order], counts[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    impostor, genuine = _sum_runs(c * ~y, starts), _sum_runs(c * y, starts)
    below = np.cumsum(impostor, axis=1) - impostor
    return (genuine * (below + impostor / 2)).sum(axis=1) / (genuine.sum(axis=1) * impostor.sum(axis=1))


def _kfold_mean_resampled(scores, labels, folds, idx=None, *, counts=None):
    """`kfold_accuracy`'s mean for each row of ``idx`` (resampled pair indices), vectorised;
    or for each row of ``counts`` (resamples, pairs), the whole-number weight of each pair.

    Equal to ``[_kfold_mean(scores[i], labels[i], folds[i]) for i in idx]``
    (the tests check it), but each resample is a row of pair multiplicities
    over the pairs sorted once, so no resample is sorted again: the same
    cumulative-sum scan as `_best_threshold`, on weights. Arrays are
    (resamples, pairs), so every scan runs along contiguous memory.

    The scan is done once over all pairs; a fold's training scan is that scan
    minus the fold's own, which only changes where the fold has a pair, so the
    best cut of each resample is found from one maximum per stretch between
    two of the fold's pairs. Multiplicities are whole numbers (int64), so every
    comparison is exact: the cut is the one a scan of the training pairs picks.
    """
    if counts is None:
        counts = _multiplicities(idx, len(scores))
    rows = len(counts)
    order = np.argsort(scores, kind="stable")
    s, y, f = scores[order], labels[order], folds[order]
    c = counts[:, order]  # (rows, n) multiplicities of the sorted pairs
    # Every scan below stays within ±2 × a row's total weight: int32 where that fits, which halves
    # the memory the scans stream through (they are bound by it), and is as exact as int64.
    if c.sum(axis=1).max(initial=0) < 2**29:
        c = c.astype(np.int32)
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    distinct = s[starts]
    n_distinct = len(distinct)
    group = np.cumsum(np.r_[False, np.diff(s) != 0])  # distinct-score index of each sorted pair
    cols = np.arange(rows)
    cy = c * y
    all_pos, all_w = _sum_runs(cy, starts), _sum_runs(c, starts)  # (rows, n_distinct)
    # Correct calls gained by calling everything up to distinct[j] "different", over all pairs.
    gain = np.cumsum(all_w - 2 * all_pos, axis=1, dtype=c.dtype)
    accuracies = []
    for fold in np.unique(folds):
        test = f == fold
        g = group[test]
        fold_starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
        at = g[fold_starts]  # the distinct scores this fold holds, increasing
        c_test = c[:, test]
        f_pos, f_w = _sum_runs(c_test * y[test], fold_starts), _sum_runs(c_test, fold_starts)
        # The training gain is gain minus the fold's, a step function rising at `at`: constant on
        # each stretch [at[t], at[t + 1]) (and 0 on [0, at[0])), so its maximum per stretch is gain's.
        f_gain = np.cumsum(f_w - 2 * f_pos, axis=1, dtype=c.dtype)
        if at[0] > 0:
            at_starts, f_gain = np.r_[0, at], np.c_[np.zeros((rows, 1), f_gain.dtype), f_gain]
        else:
            at_starts = at
        stretch_max = np.maximum.reduceat(gain, at_starts, axis=1) - f_gain
        # The last stretch reaching the maximum: of tied cuts the strictest, as _best_threshold.
        k = stretch_max.shape[1] - 1 - np.argmax(stretch_max[:, ::-1], axis=1)
        top = stretch_max[cols, k]
        # The last index of that stretch where the training gain reaches it.
        j, target = np.r_[at_starts[1:], n_distinct][k] - 1, top + f_gain[cols, k]
        look = np.flatnonzero(gain[cols, j] != target)
        while look.size:
            j[look] -= 1
            look = look[gain[look, j[look]] != target[look]]
        in_fold = np.full(n_distinct, -1)
        in_fold[at] = np.arange(len(at))

        def training_weight(r, i):  # of the training pairs at distinct score i, resamples r
            return all_w[r, i] - np.where(in_fold[i] >= 0, f_w[r, in_fold[i]], 0)

        # The gain changes at j + 1, so a training score lies there (or the scores end): the cut
        # lies below it and above the last training score at or below j (lo; none: "all same").
        hi, lo = j + 1, j.copy()
        look = np.flatnonzero(lo >= 0)
        while look.size:
            look = look[training_weight(look, lo[look]) == 0]
            lo[look] -= 1
            look = look[lo[look] >= 0]
        lo_val = distinct[np.maximum(lo, 0)]
        hi_val = distinct[np.minimum(hi, n_distinct - 1)]
        mid = lo_val / 2 + hi_val / 2
        mid = np.where(mid < hi_val, mid, lo_val)
        # "All same" wins when no cut gains over it (a cut that ties it is stricter, so it wins the tie).
        threshold = np.where((top < 0) | (lo < 0), -np.inf, np.where(hi == n_distinct, np.inf, mid))
        right = (s[test][None, :] > threshold[:, None]) == y[test][None, :]
        # Whole numbers, so these sums are exact whatever their order; a fold no pair of a
        # resample fell in (identity resampling can empty one) is NaN and left out below.
        with np.errstate(invalid="ignore"):
            accuracies.append(np.sum(c_test * right, axis=1) / np.sum(c_test, axis=1))
    held = np.isfinite(accuracies).sum(axis=0)
    # As kfold_accuracy on the resampled pairs: the mean over the folds they hold, at least two.
    return np.where(held >= 2, np.nansum(accuracies, axis=0) / np.maximum(held, 1), np.nan)


def _sum_runs(x, starts):
    """Sums of ``x`` (resamples, items) over the runs of items that begin at ``starts`` (runs of one: ``x``)."""
    return x if len(starts) == x.shape[1] else np.add.reduceat(x, starts, axis=1)


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


def _check_level(level):
    if not (isinstance(level, (int, float, np.number)) and 0 < level < 1):
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    return float(level)


def identity_clusters(image_a, image_b, labels, *, identities=None):
    """The person on each side of each pair, as integer ids: `bootstrap_ci`'s ``clusters``.

    With `identities` (image key → person, as a dataset's manifest may give),
    those. Without, people are inferred from the pairs: the two images of a
    genuine pair show one person, so each connected component of the graph
    of genuine pairs over image keys is one person. That never merges two
    people (if the labels are right) but splits a person whose images never
    meet in a genuine pair, so some of the dependence between pairs is
    missed: known identities are better.

    Parameters
    ----------
    image_a, image_b : array-like of str, shape (n_pairs,)
        The image keys of each pair.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs.
    identities : mapping, default=None
        Image key → person; every key of the pairs must be in it.

    Returns
    -------
    clusters : ndarray of int64, shape (n_pairs, 2)

    Examples
    --------
    >>> identity_clusters(["a1", "a2", "b1"], ["a2", "b1", "c1"], [1, 0, 0]).tolist()
    [[0, 0], [0, 1], [1, 2]]
    >>> identity_clusters(["a1", "a2"], ["b1", "b2"], [0, 0], identities={"a1": "A", "a2": "A", "b1": "B",
    ...                                                                   "b2": "B"}).tolist()
    [[0, 1], [0, 1]]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b, labels = np.asarray(image_a, str), np.asarray(image_b, str), _as_labels(labels)
    _check_lengths(image_a=a, image_b=b, labels=labels)
    keys, side = np.unique(np.r_[a, b], return_inverse=True)
    side = side.reshape(2, -1).T
    if identities is not None:
        missing = [str(k) for k in keys if k not in identities]
        if missing:
            raise ValueError(f"identities has no person for {len(missing)} image key(s), e.g. {missing[:5]}")
        _, person = np.unique(np.array([str(identities[k]) for k in keys]), return_inverse=True)
    else:
        genuine = side[labels]
        graph = coo_matrix((np.ones(len(genuine)), (genuine[:, 0], genuine[:, 1])), shape=(len(keys),) * 2)
        person = connected_components(graph, directed=False)[1]
    return person[side].astype(np.int64)


def holm_adjust(pvalues):
    """Holm's step-down adjusted p-values, in the order given.

    The smallest of ``m`` p-values is multiplied by ``m``, the next by
    ``m - 1``, and so on, each kept at least as large as the one before and at
    most 1. Rejecting where the adjusted value is at most ``alpha`` keeps the
    family-wise error rate at ``alpha`` under any dependence between the tests.

    Parameters
    ----------
    pvalues : array-like of shape (m,)
        In [0, 1].

    Returns
    -------
    adjusted : ndarray of shape (m,)

    Examples
    --------
    >>> holm_adjust([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = _as_1d(pvalues, "pvalues").astype(float)
    if np.any(~((p >= 0) & (p <= 1))):
        raise ValueError(f"pvalues must lie in [0, 1]; got {_some(p[~((p >= 0) & (p <= 1))])}")
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    return adjusted


BINOMIAL_METHODS = ("clopper-pearson", "wilson")


def binomial_ci(k, n, *, method="clopper-pearson", level=0.95):
    """Confidence interval of a proportion from ``k`` successes in ``n`` trials, e.g. an
    accuracy: ``k`` pairs judged right of ``n``.

    ``"clopper-pearson"`` is exact: it inverts two one-sided binomial tests,
    so it covers the true proportion at least `level` of the time whatever it
    is; with no error at all (``k == n``) its lower bound is
    ``((1 - level) / 2) ** (1 / n)``, 93.4% for 54 pairs, where a bootstrap
    would give a zero-width interval. ``"wilson"`` (the score interval) is
    narrower and covers about `level` on average. Neither is zero-width for
    ``n >= 1``. Both treat the trials as independent; pairs that share a
    person are not, so read them as lower bounds on the uncertainty.

    Parameters
    ----------
    k, n : int
        Successes and trials, ``0 <= k <= n`` and ``n >= 1``.
    method : {"clopper-pearson", "wilson"}, default="clopper-pearson"
    level : float, default=0.95
        Confidence level, in (0, 1).

    Returns
    -------
    low, high : float
        In [0, 1].

    Examples
    --------
    >>> [round(x, 4) for x in binomial_ci(54, 54)]
    [0.934, 1.0]
    >>> [round(x, 4) for x in binomial_ci(45, 54, method="wilson")]
    [0.7126, 0.9098]
    """
    from scipy.special import betaincinv, ndtri  # the beta and normal quantiles, without scipy.stats' import

    integral = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (k, n))
    if not integral or not 0 <= k <= n or n < 1:
        raise ValueError(f"k and n must be whole numbers with 0 <= k <= n and n >= 1; got k={k!r}, n={n!r}")
    if method not in BINOMIAL_METHODS:
        raise ValueError(f"method must be one of {list(BINOMIAL_METHODS)}; got {method!r}")
    alpha = 1 - _check_level(level)
    if method == "clopper-pearson":
        low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))
        high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
        return low, high
    z, p = float(ndtri(1 - alpha / 2)), k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def auc_permutation_test(scores, labels, *, n_permutations=2000, seed=0, level=0.95):
    """How far the AUC lies from 0.5, against the same scores with shuffled labels. Two-sided.

    A score that knows nothing about the pairs — a negative control — should
    put its AUC as close to 0.5 as the shuffles do; one far *below* 0.5 is as
    suspicious as one far above (the score knows the labels, inverted). The
    labels are shuffled ``n_permutations`` times (genuine count kept); the
    band is the `level` quantile of ``|AUC - 0.5|`` over the shuffles, and
    the p-value the share of shuffles at least as far from 0.5 as the real
    labels, counting the real labels as one shuffle.

    Parameters
    ----------
    scores : array-like of shape (n_pairs,)
        Finite scores.
    labels : array-like of shape (n_pairs,)
        1/True for genuine pairs, 0/False for impostor pairs; both present.
    n_permutations : int, default=2000
    seed : int, default=0
    level : float, default=0.95

    Returns
    -------
    result : dict
        ``auc``, ``distance`` (``|auc - 0.5|``), ``band``, ``pvalue``,
        ``near_chance`` (``distance <= band``), ``n_permutations``, ``level``.

    Examples
    --------
    >>> r = auc_permutation_test([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [1, 1, 1, 1, 0, 0, 0, 0])
    >>> r["auc"], r["near_chance"], r["pvalue"] < 0.05
    (1.0, False, True)
    """
    scores, labels = _check_pairs(scores, labels)
    level = _check_level(level)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer; got {n_permutations!r}")
    n, n_pos = len(labels), int(labels.sum())
    if n_pos in (0, n):
        raise ValueError(f"auc_permutation_test needs genuine and impostor pairs; got {n_pos} genuine, "
                         f"{n - n_pos} impostor")
    # Ranks from 1, ties sharing their mean rank (so a tie counts half, as in roc_auc_score).
    _, tied, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[tied]

    def auc(rank_sums):
        return (rank_sums - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))

    observed = float(auc(ranks[labels].sum()))
    rng = np.random.default_rng(seed)
    distances = np.empty(n_permutations)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_permutations, chunk):
        rows = min(chunk, n_permutations - start)
        # The first n_pos of a random order of the pairs: a uniformly random genuine set.
        picked = np.argpartition(rng.random((rows, n)), n_pos - 1, axis=1)[:, :n_pos]
        distances[start:start + rows] = np.abs(auc(ranks[picked].sum(axis=1)) - 0.5)
    distance = abs(observed - 0.5)
    band = float(np.quantile(distances, level))
    # A shuffle as far as the real labels, within rounding, counts as at least as far.
    pvalue = (1 + int(np.sum(distances >= distance - 1e-12))) / (1 + n_permutations)
    return {"auc": observed, "distance": distance, "band": band, "pvalue": pvalue,
            "near_chance": bool(distance <= band), "n_permutations": int(n_permutations), "level": level}
