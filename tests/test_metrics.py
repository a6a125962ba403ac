import json
import math
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from facebench import metrics as fm


def _random_pairs(seed, n=200, decimals=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # Rounding creates many ties, the case where ROC code usually goes wrong.
    scores = np.round(rng.normal(labels * 1.0, 1.0), decimals)
    return scores, labels


# ------------------------------------------------------------------ ROC-based


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve_matches_sklearn(seed):
    scores, labels = _random_pairs(seed)
    fpr, tpr, thr = fm.roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr, sk_thr)
    assert thr[0] == np.inf and fpr[0] == tpr[0] == 0


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn(seed):
    scores, labels = _random_pairs(seed)
    assert fm.roc_auc_score(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores))


def test_roc_accepts_bool_labels():
    assert fm.roc_auc_score([0.9, 0.1], [True, False]) == 1.0


def test_roc_errors():
    with pytest.raises(ValueError, match="1 genuine and 0 impostor"):
        fm.roc_curve([0.5], [1])
    with pytest.raises(ValueError, match=r"1 non-finite"):
        fm.roc_curve([0.5, np.nan], [1, 0])
    with pytest.raises(ValueError, match=r"scores=3, labels=2"):
        fm.roc_auc_score([0.1, 0.2, 0.3], [0, 1])


def test_eer_hand_computed():
    # ROC points: (0,0) (0,.5) (.5,1) (1,1); FPR - FNR goes -.5 -> +.5 across
    # the tied step, so the crossing is half way: FPR = FNR = 0.25.
    assert fm.equal_error_rate([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.25)
    # G I I G I: crossing between (1/3, .5) and (2/3, .5), FNR stays .5.
    assert fm.equal_error_rate([5, 4, 3, 2, 1], [1, 0, 0, 1, 0]) == pytest.approx(0.5)
    assert fm.equal_error_rate([0.9, 0.1], [1, 0]) == 0.0
    assert fm.equal_error_rate([0.1, 0.9], [1, 0]) == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_eer_lies_on_the_interpolated_roc(seed):
    scores, labels = _random_pairs(seed)
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    eer = fm.equal_error_rate(scores, labels)
    point = np.array([eer, 1 - eer])  # (FPR, TPR) where FPR == FNR
    on_segment = []
    for a, b in zip(np.c_[fpr, tpr][:-1], np.c_[fpr, tpr][1:]):
        cross = (b - a)[0] * (point - a)[1] - (b - a)[1] * (point - a)[0]
        inside = np.all((np.minimum(a, b) - 1e-12 <= point) & (point <= np.maximum(a, b) + 1e-12))
        on_segment.append(inside and abs(cross) < 1e-12)
    assert any(on_segment)


def test_tar_at_far_hand_computed():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1]
    # ROC: (0,0) (0,1/3) (.5,1/3) (.5,2/3) (1,2/3) (1,1)
    assert fm.tar_at_far(scores, labels, 0.4) == pytest.approx(1 / 3)
    assert fm.tar_at_far(scores, labels, 0.5) == pytest.approx(2 / 3)
    assert fm.tar_at_far(scores, labels, 1.0) == 1.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("far", [1e-3, 0.01, 0.1, 0.37, 1.0])
def test_tar_at_far_brute_force(seed, far):
    scores, labels = _random_pairs(seed, n=120)
    pos, neg = scores[labels == 1], scores[labels == 0]
    best = 0.0
    for t in np.r_[np.inf, np.unique(scores)]:
        if np.mean(neg >= t) <= far:
            best = max(best, np.mean(pos >= t))
    assert fm.tar_at_far(scores, labels, far) == pytest.approx(best)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    assert fm.tar_at_far(scores, labels, far) == pytest.approx(sk_tpr[sk_fpr <= far].max())


@pytest.mark.parametrize("far", [0, -0.1, 1.5, np.nan, "1e-3"])
def test_tar_at_far_rejects_bad_far(far):
    with pytest.raises(ValueError, match="far must be a number in"):
        fm.tar_at_far([0.9, 0.1], [1, 0], far)


# ------------------------------------------------------------ accuracy-based


def test_best_threshold_ties_take_smallest():
    # Candidates -inf, .25, .6, +inf give 2, 3, 3, 2 correct: .25 and .6 tie.
    assert fm.best_threshold([0.1, 0.4, 0.4, 0.8], [0, 1, 0, 1]) == 0.25


def test_best_threshold_one_class():
    assert fm.best_threshold([0.3, 0.7], [1, 1]) == -np.inf
    assert fm.best_threshold([0.3, 0.7], [0, 0]) == np.inf


def test_best_threshold_adjacent_floats_keep_strict_rule():
    lo = 0.5
    hi = np.nextafter(lo, 1.0)
    t = fm.best_threshold([lo, hi], [0, 1])
    assert lo <= t < hi


@pytest.mark.parametrize("seed", range(20))
def test_best_threshold_brute_force(seed):
    scores, labels = _random_pairs(seed, n=int(np.random.default_rng(seed).integers(1, 30)))
    distinct = np.unique(scores)
    candidates = [-np.inf, *((distinct[:-1] + distinct[1:]) / 2), np.inf]
    best_t, best_acc = None, -1.0
    for t in candidates:
        acc = np.mean((scores > t) == labels)
        if acc > best_acc:  # strict: the first (smallest) best candidate wins
            best_t, best_acc = t, acc
    assert fm.best_threshold(scores, labels) == pytest.approx(best_t)


def test_best_threshold_needs_a_pair():
    with pytest.raises(ValueError, match="at least one pair"):
        fm.best_threshold([], [])


def test_kfold_hand_computed():
    scores = [0.125, 0.625, 0.375, 0.25, 0.75, 0.5]
    labels = [0, 1, 0, 0, 1, 1]
    folds = [0, 0, 0, 1, 1, 1]
    acc, thr = fm.kfold_accuracy(scores, labels, folds)
    # Fold 0: trained on fold 1 -> t=.375; .375 > .375 is False, so all right.
    # Fold 1: trained on fold 0 -> t=.5; the genuine .5 is not > .5: 2/3.
    np.testing.assert_allclose(acc, [1.0, 2 / 3])
    np.testing.assert_array_equal(thr, [0.375, 0.5])


def test_kfold_folds_are_sorted_distinct_values():
    scores = [0.125, 0.625, 0.375, 0.25, 0.75, 0.5]
    labels = [0, 1, 0, 0, 1, 1]
    acc, thr = fm.kfold_accuracy(scores, labels, [7, 7, 7, 3, 3, 3])
    np.testing.assert_allclose(acc, [2 / 3, 1.0])
    np.testing.assert_array_equal(thr, [0.5, 0.375])


def test_kfold_single_class_folds():
    acc, thr = fm.kfold_accuracy([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], [0, 0, 1, 1])
    # Each training part holds one class, so the threshold runs to +-inf.
    np.testing.assert_array_equal(thr, [np.inf, -np.inf])
    np.testing.assert_array_equal(acc, [0.0, 0.0])


def test_kfold_fold_with_one_class_among_three():
    scores = [0.9, 0.8, 0.7, 0.2, 0.6, 0.3]
    labels = [1, 1, 1, 0, 1, 0]
    acc, thr = fm.kfold_accuracy(scores, labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(acc, [1.0, 1.0, 1.0])
    assert np.all(np.isfinite(thr))


def test_kfold_separable_is_perfect():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    scores = np.where(labels == 1, rng.uniform(0.6, 1.0, 600), rng.uniform(0.0, 0.4, 600))
    acc, thr = fm.kfold_accuracy(scores, labels, np.arange(600) % 10)
    np.testing.assert_array_equal(acc, np.ones(10))
    assert np.all((thr > 0.3) & (thr < 0.7))


def test_kfold_errors():
    with pytest.raises(ValueError, match=r"at least 2 folds; got \[4\]"):
        fm.kfold_accuracy([0.1, 0.9], [0, 1], [4, 4])
    with pytest.raises(ValueError, match=r"integer-like.*0\.5"):
        fm.kfold_accuracy([0.1, 0.9], [0, 1], [0, 0.5])
    with pytest.raises(ValueError, match=r"folds=3"):
        fm.kfold_accuracy([0.1, 0.9], [0, 1], [0, 1, 2])


# -------------------------------------------------------------------- report


def _report_inputs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(labels * 2.0, 1.0)
    folds = np.arange(n) % 10
    return scores, labels, folds


def test_far_key():
    assert fm.far_key(1e-2) == "tar_at_far_1e-2"
    assert fm.far_key(1e-3) == "tar_at_far_1e-3"
    assert fm.far_key(1.0) == "tar_at_far_1e0"
    with pytest.raises(ValueError, match="one significant digit"):
        fm.far_key(0.015)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fm.far_key(2)


def test_report_keys_and_json():
    scores, labels, folds = _report_inputs()
    r = fm.verification_report(scores, labels, folds, decisions=scores > 1)
    expected = {
        "n_pairs", "n_genuine", "n_impostor", "n_valid", "acquire_rate",
        "accuracy_mean", "accuracy_std", "fold_accuracies", "thresholds",
        "auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "far_floor", "flags",
        "hard_accuracy", "hard_accuracy_all", "n_invalid_decisions",
    }
    assert set(r) == expected
    assert json.loads(json.dumps(r))["n_pairs"] == 400
    assert r["n_genuine"] + r["n_impostor"] == 400
    assert r["acquire_rate"] == 1.0 and r["n_invalid_decisions"] == 0
    assert r["hard_accuracy"] == r["hard_accuracy_all"]
    acc, _ = fm.kfold_accuracy(scores, labels, folds)
    assert r["accuracy_mean"] == pytest.approx(acc.mean())
    assert r["accuracy_std"] == pytest.approx(acc.std(ddof=0))
    assert r["auc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    for value in r.values():
        assert type(value) in (int, float, list)
    assert all(type(v) is float for v in r["fold_accuracies"] + r["thresholds"])


def test_report_without_decisions_has_no_hard_keys():
    r = fm.verification_report(*_report_inputs())
    assert "hard_accuracy" not in r and "n_invalid_decisions" not in r


def test_report_nan_scores_are_excluded_not_different():
    scores, labels, folds = _report_inputs()
    dropped = np.zeros(len(scores), bool)
    dropped[:40] = True
    with_nan = np.where(dropped, np.nan, scores)
    r = fm.verification_report(with_nan, labels, folds)
    clean = fm.verification_report(scores[~dropped], labels[~dropped], folds[~dropped])
    assert r["n_pairs"] == 400 and r["n_valid"] == 360
    assert r["acquire_rate"] == pytest.approx(0.9)
    assert r["n_genuine"] == int(labels.sum())  # counts cover all pairs
    for key in ("accuracy_mean", "fold_accuracies", "auc", "eer", "far_floor", "tar_at_far_1e-2"):
        assert r[key] == clean[key]
    assert any("40 of 400 pairs have no valid output" in f for f in r["flags"])


def test_report_hard_accuracy_with_invalid_decisions():
    labels = [1, 1, 0, 0, 1, 0]
    decisions = [1, -1, 0, np.nan, 0, 0]
    r = fm.verification_report([0.9, 0.8, 0.2, 0.1, 0.7, 0.3], labels, [0, 0, 0, 1, 1, 1],
                               decisions=decisions)
    # 4 valid decisions, 3 correct; the two invalid ones are errors only in _all.
    assert r["n_invalid_decisions"] == 2
    assert r["hard_accuracy"] == pytest.approx(3 / 4)
    assert r["hard_accuracy_all"] == pytest.approx(3 / 6)
    assert r["n_valid"] == 4 and r["acquire_rate"] == pytest.approx(4 / 6)
    assert r["auc"] == 1.0  # scores are all finite, so score metrics use all 6


def test_report_flags_far_below_floor():
    scores, labels, folds = _report_inputs(n=90)
    n_imp = int(np.sum(labels == 0))
    r = fm.verification_report(scores, labels, folds, fars=(1e-1, 1e-2, 1e-3))
    assert r["far_floor"] == pytest.approx(1 / n_imp)
    assert r["flags"] == [
        f"TAR@FAR=1e-2 is not resolved: {n_imp} impostor pairs give a FAR floor of {1 / n_imp:.1e}",
        f"TAR@FAR=1e-3 is not resolved: {n_imp} impostor pairs give a FAR floor of {1 / n_imp:.1e}",
    ]
    assert "tar_at_far_1e-1" in r


def test_report_no_valid_pair_is_nan_not_error():
    r = fm.verification_report([np.nan, np.nan], [1, 0], [0, 1], decisions=[-1, np.nan])
    assert r["acquire_rate"] == 0.0 and r["n_valid"] == 0
    for key in ("accuracy_mean", "accuracy_std", "auc", "eer", "tar_at_far_1e-2", "far_floor",
                "hard_accuracy"):
        assert math.isnan(r[key]), key
    assert r["hard_accuracy_all"] == 0.0
    assert r["fold_accuracies"] == [] and r["thresholds"] == []
    json.dumps(r)


def test_report_one_class_left_is_nan():
    r = fm.verification_report([0.9, 0.8, np.nan, np.nan], [1, 1, 0, 0], [0, 1, 0, 1])
    assert math.isnan(r["auc"]) and math.isnan(r["far_floor"])
    assert r["fold_accuracies"] == [1.0, 1.0]
    assert any("undefined" in f for f in r["flags"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": [0.1, 0.2, 0.3]}, r"scores, labels, folds must have equal lengths; "
                                       r"got scores=3, labels=2, folds=2"),
        ({"labels": [1, 2]}, r"labels must be 0/1 or bool; got 1 other value\(s\), e\.g\. \[2\]"),
        ({"labels": ["a", "b"]}, r"labels must be numeric; got dtype <U1"),
        ({"folds": [0, 1.5]}, r"folds must be integer-like.*1\.5"),
        ({"scores": [[0.1, 0.2]]}, r"scores must be 1-D; got shape \(1, 2\)"),
        ({"decisions": [1, 2]}, r"decisions must be 1 \(same\).*\[2\.0\]"),
        ({"decisions": [1]}, r"decisions=1"),
        ({"fars": (1e-2, 1e-2)}, r"fars must be distinct"),
    ],
)
def test_report_validation_messages(kwargs, match):
    args = {"scores": [0.9, 0.1], "labels": [1, 0], "folds": [0, 1]} | kwargs
    with pytest.raises(ValueError, match=match):
        fm.verification_report(**args)


def test_report_speed():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 6000)
    scores = np.round(rng.normal(labels * 2.0, 1.0), 3)
    scores[rng.choice(6000, 30, replace=False)] = np.nan
    folds = np.arange(6000) % 10
    decisions = np.where(rng.random(6000) < 0.01, -1, scores > 1)
    fm.verification_report(scores, labels, folds, decisions=decisions)  # warm-up
    start = time.perf_counter()
    fm.verification_report(scores, labels, folds, decisions=decisions)
    assert time.perf_counter() - start < 0.5


# ------------------------------------------------------ beyond the protocol


@pytest.mark.parametrize("seed", range(3))
def test_det_curve_is_the_roc_seen_from_its_errors(seed):
    scores, labels = _random_pairs(seed)
    far, frr, thr = fm.det_curve(scores, labels)
    fpr, tpr, roc_thr = fm.roc_curve(scores, labels)
    np.testing.assert_array_equal(far, fpr)
    np.testing.assert_allclose(frr, 1 - tpr)
    np.testing.assert_array_equal(thr, roc_thr)
    # every point sklearn's DET curve keeps lies on ours
    sk_far, sk_frr, _ = skm.det_curve(labels, scores)
    ours = set(zip(np.round(far, 12), np.round(frr, 12)))
    assert set(zip(np.round(sk_far, 12), np.round(sk_frr, 12))) <= ours


@pytest.mark.parametrize("seed", range(3))
def test_kfold_decisions_reproduce_the_fold_accuracies(seed):
    scores, labels = _random_pairs(seed)
    folds = np.arange(len(scores)) % 5
    decisions = fm.kfold_decisions(scores, labels, folds)
    acc, _ = fm.kfold_accuracy(scores, labels, folds)
    per_fold = [np.mean(decisions[folds == k] == (labels[folds == k] == 1)) for k in range(5)]
    np.testing.assert_allclose(per_fold, acc)


@pytest.mark.parametrize("b, c", [(0, 0), (3, 0), (5, 5), (7, 2), (40, 25), (300, 251)])
def test_mcnemar_exact_pvalue_matches_scipy_binomtest(b, c):
    from scipy.stats import binomtest

    # a hand-built 2×2 table: 10 both right, b only A, c only B, 4 neither
    a = np.r_[np.ones(10), np.ones(b), np.zeros(c), np.zeros(4)].astype(bool)
    bb = np.r_[np.ones(10), np.zeros(b), np.ones(c), np.zeros(4)].astype(bool)
    r = fm.mcnemar_test(a, bb)
    assert (r["both"], r["a_only"], r["b_only"], r["neither"]) == (10, b, c, 4)
    assert r["statistic"] == min(b, c)
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert r["pvalue"] == pytest.approx(expected, rel=1e-9)
    assert r["accuracy_a"] == pytest.approx((10 + b) / (14 + b + c))


def test_mcnemar_hand_worked_table():
    # b=1, c=6: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128
    r = fm.mcnemar_test([1] * 1 + [0] * 6, [0] * 1 + [1] * 6)
    assert r["pvalue"] == 0.125


def test_mcnemar_errors_name_the_argument():
    with pytest.raises(ValueError, match="correct_b must be 0/1"):
        fm.mcnemar_test([1, 0], [1, 2])
    with pytest.raises(ValueError, match="equal lengths"):
        fm.mcnemar_test([1, 0], [1])


def test_bootstrap_ci_constant_statistic_has_zero_width():
    r = fm.bootstrap_ci([1, 1, 0, 0], [1, 1, 0, 0], statistic="decision_accuracy", n_resamples=50)
    assert r["estimate"] == r["low"] == r["high"] == 1.0


def test_bootstrap_ci_of_a_mean_matches_scipy_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 600)
    decisions = np.where(rng.random(600) < 0.8, labels, 1 - labels)
    r = fm.bootstrap_ci(decisions, labels, statistic="decision_accuracy", n_resamples=2000, seed=3)
    ref = bootstrap(((decisions == labels).astype(float),), np.mean, n_resamples=2000, method="percentile",
                    rng=np.random.default_rng(3)).confidence_interval
    # stratifying by label narrows the interval a little; both are about ±1.96·sqrt(p(1-p)/n)
    assert r["low"] == pytest.approx(ref.low, abs=0.01) and r["high"] == pytest.approx(ref.high, abs=0.01)
    half = 1.96 * math.sqrt(r["estimate"] * (1 - r["estimate"]) / 600)
    assert (r["high"] - r["low"]) / 2 == pytest.approx(half, rel=0.15)


def test_bootstrap_ci_kfold_is_reproducible_and_keeps_fold_sizes():
    scores, labels = _random_pairs(0, n=300)
    folds = np.arange(300) % 10
    seen = []

    def spy(s, y, f):
        seen.append((np.bincount(f, minlength=10).tolist(), int(y.sum())))
        return float(np.mean(fm.kfold_accuracy(s, y, f)[0]))

    a = fm.bootstrap_ci(scores, labels, folds, n_resamples=100, seed=7)
    b = fm.bootstrap_ci(scores, labels, folds, n_resamples=100, seed=7)
    assert a == b and a["low"] <= a["estimate"] <= a["high"]
    assert a["estimate"] == pytest.approx(np.mean(fm.kfold_accuracy(scores, labels, folds)[0]))
    fm.bootstrap_ci(scores, labels, folds, statistic=spy, n_resamples=20)
    assert {s for s in map(str, seen)} == {str(([30] * 10, int(labels.sum())))}
    narrow = fm.bootstrap_ci(scores, labels, folds, n_resamples=100, seed=7, level=0.5)
    assert a["low"] <= narrow["low"] <= narrow["high"] <= a["high"]


@pytest.mark.parametrize("kwargs, match", [
    ({"statistic": "median"}, "statistic must be one of"),
    ({"statistic": "kfold_accuracy", "folds": None}, "needs folds"),
    ({"n_resamples": 0}, "n_resamples must be a positive integer"),
    ({"level": 1.0}, "level must be in"),
])
def test_bootstrap_ci_errors(kwargs, match):
    args = {"folds": [0, 1, 0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        fm.bootstrap_ci([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1], **args)


@pytest.mark.parametrize("seed", range(4))
def test_bootstrap_kfold_fast_path_equals_rerunning_the_protocol(seed):
    # Few distinct scores: ties and thresholds that fall between resampled-away scores.
    scores, labels = _random_pairs(seed, n=120, decimals=0 if seed % 2 else 1)
    folds = np.arange(120) % 4

    def protocol(s, y, f):
        return float(np.mean(fm.kfold_accuracy(s, y, f)[0]))

    fast = fm.bootstrap_ci(scores, labels, folds, n_resamples=60, seed=seed)
    slow = fm.bootstrap_ci(scores, labels, folds, statistic=protocol, n_resamples=60, seed=seed)
    assert (fast["low"], fast["high"], fast["estimate"]) == pytest.approx((slow["low"], slow["high"],
                                                                           slow["estimate"]), abs=1e-12)


def test_bootstrap_kfold_values_equal_per_resample():
    scores, labels = _random_pairs(9, n=80, decimals=0)
    labels = labels == 1
    folds = np.arange(80) % 5
    idx = np.random.default_rng(0).integers(0, 80, (40, 80))
    fast = fm._kfold_mean_resampled(scores.astype(float), labels, folds, idx)
    slow = [np.mean(fm.kfold_accuracy(scores[i], labels[i], folds[i])[0]) if len(np.unique(folds[i])) > 1
            else np.nan for i in idx]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_bootstrap_kfold_speed():
    scores, labels = _random_pairs(0, n=6000, decimals=3)
    t0 = time.perf_counter()
    fm.bootstrap_ci(scores, labels, np.arange(6000) % 10, n_resamples=1000)
    assert time.perf_counter() - t0 < 10  # the LFW size: 1000 resamples of 6000 pairs
