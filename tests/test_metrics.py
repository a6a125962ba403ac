import json
import math

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


def test_best_threshold_ties_take_the_strictest():
    # Candidates -inf, .25, .6, +inf give 2, 3, 3, 2 correct: .25 and .6 tie; insightface keeps
    # the smallest tied distance, i.e. the highest similarity cut-off.
    assert fm.best_threshold([0.1, 0.4, 0.4, 0.8], [0, 1, 0, 1]) == pytest.approx(0.6)
    # "All same" (-inf) and the cut at .7 both get 2 of 3 right: the cut is stricter.
    assert fm.best_threshold([0.2, 0.5, 0.9], [1, 0, 1]) == 0.7
    assert fm.best_threshold([0.2, 0.7], [1, 0]) == np.inf  # -inf, .45 and +inf all get 1 right


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
        if acc >= best_acc:  # ties: the last (strictest) best candidate wins
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


def _insightface_kfold_accuracy(dist, issame, n_folds=10):
    """insightface's verification.calculate_roc, rewritten: squared distances, a 0.01 grid of
    thresholds, "same" when dist < threshold, the first best threshold on the training folds,
    KFold(n_splits=10, shuffle=False) folds."""
    thresholds = np.arange(0, 4, 0.01)
    folds = np.array_split(np.arange(len(dist)), n_folds)
    accuracies = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(dist)), test)
        acc_train = np.mean((dist[train][None, :] < thresholds[:, None]) == issame[train][None, :], axis=1)
        best = thresholds[np.argmax(acc_train)]
        accuracies.append(np.mean((dist[test] < best) == issame[test]))
    return np.mean(accuracies)


@pytest.mark.parametrize("seed", range(4))
def test_kfold_accuracy_agrees_with_insightface_within_0_05_points(seed):
    # LFW-sized: 6000 pairs of unit embeddings, 10 contiguous folds, genuine pairs closer. The
    # distances lie on insightface's 0.01 grid, so only the tie rule can set the two apart: the most
    # lenient of tied thresholds (the rule before) is 0.083 points off for seed 1.
    rng = np.random.default_rng(seed)
    issame = np.arange(6000) % 2 == 0
    a = rng.normal(size=(6000, 16))
    b = np.where(issame[:, None], a + rng.normal(scale=0.9, size=a.shape), rng.normal(size=a.shape))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    dist = np.round(np.sum((a - b) ** 2, axis=1), 2)
    ours, _ = fm.kfold_accuracy(-dist, issame, np.arange(6000) // 600)
    reference = _insightface_kfold_accuracy(dist, issame)
    assert 0.7 < reference < 0.99  # neither trivial nor perfect
    assert abs(ours.mean() - reference) < 0.0005


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
        "auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "tar_false_accepts", "tar_unresolved",
        "far_floor", "flags", "hard_accuracy", "hard_accuracy_all", "n_invalid_decisions",
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
        assert type(value) in (int, float, list, dict)
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
    assert any("40 of 400 pairs have no score" in f and "use the other 360" in f for f in r["flags"])


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
    assert any("2 of 6 pairs have no decision" in f and "the 2 of them with a score" in f for f in r["flags"])


def test_report_one_policy_for_invalid_answers_whatever_the_backend():
    # The same answers from a backend that reads log-odds (the invalid answer keeps a score) and one
    # whose score is the answer itself (it has none): decisions and acquire rate agree; score
    # metrics take every pair with a score, so the second leaves the invalid pair out.
    labels, folds = [1, 1, 0, 0], [0, 1, 0, 1]
    decisions = [1, -1, 0, 1]
    log_odds = fm.verification_report([2.0, -0.5, -1.0, 0.5], labels, folds, decisions=decisions)
    answer = fm.verification_report([1.0, np.nan, 0.0, 1.0], labels, folds, decisions=decisions)
    for key in ("acquire_rate", "hard_accuracy", "hard_accuracy_all", "n_valid"):
        assert log_odds[key] == answer[key], key
    # AUC by hand: log-odds, genuine {2, -0.5} vs impostor {-1, 0.5}: 3 of 4 comparisons won;
    # answers, genuine {1} vs impostor {0, 1}: one won, one tied, 1.5 of 2.
    assert (log_odds["auc"], answer["auc"]) == (0.75, 0.75)


def test_report_tar_needs_30_false_accepts():
    # 100 impostors at 0..99, 10 genuine pairs above them all: at FAR f the threshold admits
    # floor(100 f) impostors, so FAR=0.5 rests on 50 false accepts, 0.2 on 20 and 0.01 on 1.
    scores = np.r_[np.arange(100.0), 200 + np.arange(10.0)]
    labels = np.r_[np.zeros(100), np.ones(10)]
    r = fm.verification_report(scores, labels, np.arange(110) % 2, fars=(5e-1, 2e-1, 1e-2))
    assert r["tar_false_accepts"] == {"tar_at_far_5e-1": 50, "tar_at_far_2e-1": 20, "tar_at_far_1e-2": 1}
    assert r["tar_unresolved"] == ["tar_at_far_2e-1", "tar_at_far_1e-2"]
    assert [f.split(":")[0] for f in r["flags"]] == ["TAR@FAR=2e-1 is not resolved", "TAR@FAR=1e-2 is not resolved"]
    assert "20 of the 100 impostor pairs lie at or above its threshold" in r["flags"][0]
    assert fm.MIN_FALSE_ACCEPTS == 30  # Doddington's rule of 30


@pytest.mark.parametrize("seed", range(3))
def test_false_accepts_at_far_counts_impostors_at_or_above_the_tar_threshold(seed):
    scores, labels = _random_pairs(seed, n=150)
    for far in (0.05, 0.1, 0.3):
        tar = fm.tar_at_far(scores, labels, far)
        # brute force: the lowest threshold whose FAR is at most far; its TAR is tar_at_far's
        allowed = [t for t in np.unique(scores) if np.mean(scores[labels == 0] >= t) <= far]
        t = min(allowed)
        assert np.mean(scores[labels == 1] >= t) == pytest.approx(tar)
        assert fm.false_accepts_at_far(scores, labels, far) == int(np.sum(scores[labels == 0] >= t))


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


@pytest.mark.parametrize("people", [False, True])
def test_bootstrap_of_several_statistics_uses_one_set_of_resamples(people):
    scores, labels = _random_pairs(5, n=200)
    folds = np.arange(200) % 10
    clusters = np.c_[np.arange(200) % 37, np.where(labels == 1, np.arange(200) % 37, np.arange(200) % 41 + 37)] \
        if people else None
    options = dict(clusters=clusters, n_resamples=80, seed=4)
    both = fm.bootstrap_ci(scores, labels, folds, statistic=["kfold_accuracy", "auc"], **options)
    assert both == [fm.bootstrap_ci(scores, labels, folds, statistic=s, **options) for s in ("kfold_accuracy", "auc")]
    with pytest.raises(ValueError, match="the list is empty"):
        fm.bootstrap_ci(scores, labels, folds, statistic=[])


# ------------------------------------------------- intervals, identities, families of tests


@pytest.mark.parametrize("k, n", [(0, 1), (0, 20), (7, 20), (54, 54), (45, 54), (5990, 6000)])
@pytest.mark.parametrize("method, scipy_method", [("clopper-pearson", "exact"), ("wilson", "wilson")])
def test_binomial_ci_matches_scipy(k, n, method, scipy_method):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method=scipy_method)
    low, high = fm.binomial_ci(k, n, method=method)
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert low < high  # never zero-width


@pytest.mark.parametrize("k, n", [(3, 10), (50, 54), (54, 54)])
def test_clopper_pearson_bounds_are_where_the_binomial_tails_reach_alpha_over_2(k, n):
    # The definition, with exact binomial sums: P[X >= k | low] = 0.025 and P[X <= k | high] = 0.025.
    low, high = fm.binomial_ci(k, n)

    def pmf(i, p):
        return math.comb(n, i) * p ** i * (1 - p) ** (n - i)

    assert sum(pmf(i, low) for i in range(k, n + 1)) == pytest.approx(0.025, abs=1e-9)
    if k < n:
        assert sum(pmf(i, high) for i in range(k + 1)) == pytest.approx(0.025, abs=1e-9)
    else:
        assert high == 1.0
    assert fm.binomial_ci(54, 54)[0] == pytest.approx(0.025 ** (1 / 54))  # 93.4%, the issue's number


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 5, "n": 4}, "0 <= k <= n"), ({"k": 1.5, "n": 4}, "whole numbers"), ({"k": 0, "n": 0}, "n >= 1"),
    ({"k": 1, "n": 4, "method": "wald"}, "method must be one of"), ({"k": 1, "n": 4, "level": 95}, "level"),
])
def test_binomial_ci_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fm.binomial_ci(**kwargs)


def test_holm_adjust_by_the_step_down_procedure():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    adjusted = fm.holm_adjust(p)
    # the procedure itself: test the sorted p-values against alpha / (m - i) until one fails
    for alpha in (0.01, 0.02, 0.05, 0.1, 0.2):
        rejected = np.zeros(len(p), bool)
        for i, j in enumerate(np.argsort(p)):
            if p[j] > alpha / (len(p) - i):
                break
            rejected[j] = True
        np.testing.assert_array_equal(adjusted <= alpha, rejected)
    np.testing.assert_allclose(adjusted, [0.04, 0.09, 0.09, 0.025, 0.5])
    assert fm.holm_adjust([0.6, 0.9]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"pvalues must lie in \[0, 1\]"):
        fm.holm_adjust([0.5, 1.5])


def test_auc_permutation_test_agrees_with_the_mann_whitney_test():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(0)
    labels = np.arange(60) < 25
    for shift in (0.0, 0.4, 1.0):
        scores = rng.normal(shift * labels, 1.0)
        r = fm.auc_permutation_test(scores, labels, n_permutations=4000, seed=1)
        mw = mannwhitneyu(scores[labels], scores[~labels], alternative="two-sided", method="exact")
        assert r["auc"] == pytest.approx(mw.statistic / (25 * 35))
        assert r["pvalue"] == pytest.approx(mw.pvalue, abs=0.02)  # Monte Carlo error, about 0.007
        assert r["near_chance"] == (mw.pvalue > 0.05)
    # two-sided: a score that knows the labels backwards is as far from chance as one that knows them
    below = fm.auc_permutation_test(np.arange(20.0), np.arange(20) < 10, n_permutations=500)
    assert below["auc"] == 0.0 and not below["near_chance"]


def test_auc_permutation_band_is_the_quantile_of_shuffled_distances():
    # n = 4, two genuine: the 6 equally likely genuine sets give AUCs 1, 3/4, 1/2, 1/2, 1/4, 0,
    # so |AUC - 0.5| is 0.5, 0.25, 0, 0, 0.25, 0.5; its 95% quantile is 0.5.
    r = fm.auc_permutation_test([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1], n_permutations=6000)
    assert r["band"] == 0.5 and r["auc"] == 1.0 and r["near_chance"]
    assert r["pvalue"] == pytest.approx(1 / 3, abs=0.02)
    with pytest.raises(ValueError, match="genuine and impostor"):
        fm.auc_permutation_test([1.0, 2.0], [1, 1])


def test_identity_clusters_from_names_or_from_genuine_pairs():
    a, b = ["x1", "x2", "y1", "z1", "w1"], ["x3", "y1", "y2", "x2", "w2"]
    same = [1, 0, 1, 0, 0]
    # genuine pairs join x1-x3 and y1-y2; x2 meets x1/x3 only through no genuine pair, so stays apart
    inferred = fm.identity_clusters(a, b, same)
    named = fm.identity_clusters(a, b, same, identities={k: k[0] for k in set(a) | set(b)})
    assert inferred[0, 0] == inferred[0, 1] and inferred[2, 0] == inferred[2, 1] == inferred[1, 1]
    assert inferred[1, 0] != inferred[0, 0]  # x2 is inferred to be someone else
    assert named[1, 0] == named[0, 0]  # the names say it is x
    assert len(np.unique(named)) == 4 and len(np.unique(inferred)) == 6
    with pytest.raises(ValueError, match=r"no person for 1 image key\(s\), e\.g\. \['w2'\]"):
        fm.identity_clusters(a, b, same, identities={k: k[0] for k in set(a) | set(b) - {"w2"}})


def _design(n_people=120, n_genuine_people=60, pairs_per_person=2, n_impostor=240, seed=0):
    """A verification design where pairs share people: genuine pairs of 60 people, impostor
    pairs between random people of 120."""
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(n_genuine_people), pairs_per_person)
    ia = rng.integers(0, n_people, n_impostor)
    ib = (ia + rng.integers(1, n_people, n_impostor)) % n_people
    clusters = np.c_[np.r_[a, ia], np.r_[a, ib]]
    labels = np.r_[np.ones(len(a), bool), np.zeros(n_impostor, bool)]
    return clusters, labels


def _person_effect_scores(clusters, labels, rng, tau=0.8):
    # each person has a "hard to verify" effect and a "looks generic" effect: pairs sharing a person err together
    u, v = rng.normal(0, tau, (2, clusters.max() + 1))
    a, b = clusters.T
    return np.where(labels, 1.5 + u[a], v[a] + v[b]) + rng.normal(0, 1, len(labels))


def test_identity_bootstrap_spread_follows_the_true_spread_where_the_pair_bootstrap_falls_short():
    clusters, labels = _design()
    truth = np.std([fm.roc_auc_score(_person_effect_scores(clusters, labels, np.random.default_rng(100 + i)), labels)
                    for i in range(400)])
    ratios = {"pairs": [], "identities": []}
    for rep in range(6):
        scores = _person_effect_scores(clusters, labels, np.random.default_rng(rep))
        for method, extra in (("pairs", {}), ("identities", {"clusters": clusters})):
            ci = fm.bootstrap_ci(scores, labels, statistic="auc", n_resamples=400, seed=rep, **extra)
            assert ci["method"] == method
            ratios[method].append((ci["high"] - ci["low"]) / (2 * 1.96 * truth))
    pairs, people = np.mean(ratios["pairs"]), np.mean(ratios["identities"])
    assert pairs < 0.9 and 0.95 < people < 1.5, (pairs, people)


def test_identity_bootstrap_of_independent_pairs_is_the_pair_bootstrap():
    # No two pairs share a person: every pair is a unit of its own, drawn within its label.
    labels = np.arange(40) < 20
    clusters = np.c_[np.arange(40), np.where(labels, np.arange(40), 100 + np.arange(40))]
    draw = fm._identity_draw(clusters, labels, np.random.default_rng(0))
    w = draw(2000)
    assert set(np.unique(w)) <= set(range(12)) and (w[:, labels].sum(axis=1) == 20).all()
    assert (w[:, ~labels].sum(axis=1) == 20).all()
    assert w.mean() == pytest.approx(1, abs=0.01) and w.var() == pytest.approx(0.95, abs=0.05)  # multinomial


def test_identity_bootstrap_weights_are_products_of_person_counts():
    # person 0 in three pairs, person 1 in two: pair (0, 1) weighs m0 * m1, (0, 0) weighs m0, and the
    # pair of two people seen nowhere else (5, 6) is drawn as a unit of its own
    clusters = np.array([[0, 0], [0, 1], [0, 2], [1, 3], [5, 6]])
    labels = np.array([True, False, False, False, False])
    w = fm._identity_draw(clusters, labels, np.random.default_rng(0))(500)
    np.testing.assert_array_equal(w[:, 2], w[:, 0])  # person 2 appears once: (0, 2) weighs m0
    np.testing.assert_array_equal(w[:, 3], w[:, 1] // np.maximum(w[:, 0], 1) * (w[:, 0] > 0)
                                  + (w[:, 0] == 0) * w[:, 3])
    assert (w[:, 0] >= 1).all()  # the genuine stratum holds person 0 alone: drawn every time
    assert set(np.unique(w[:, 4])) <= {0, 1, 2, 3}


@pytest.mark.parametrize("statistic", ["kfold_accuracy", "auc", "decision_accuracy", "eer"])
def test_weighted_fast_paths_equal_the_statistic_on_repeated_pairs(statistic):
    scores, labels = _random_pairs(4, n=90, decimals=0)
    labels = labels == 1
    folds = np.arange(90) % 3
    values = scores if statistic != "decision_accuracy" else (scores > 0.5).astype(float)
    clusters = np.c_[np.arange(90) % 25, np.where(labels, np.arange(90) % 25, 30 + np.arange(90) % 40)]
    counts = fm._identity_draw(clusters, labels, np.random.default_rng(1))(50)
    fn = fm.BOOTSTRAP_STATISTICS[statistic]
    fast = np.asarray(fm._resampled(fn, values, labels, folds, counts), float)
    slow = []
    for c in counts:
        i = np.repeat(np.arange(90), c)
        ok = len(np.unique(folds[i])) > 1 and labels[i].any() and not labels[i].all()
        slow.append(fn(values[i], labels[i], folds[i]) if ok else np.nan)
    np.testing.assert_allclose(fast, slow, atol=1e-12)
