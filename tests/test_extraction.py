"""Answer extraction rules on answers as models give them, the score position,
refusals, and re-reading stored runs (``reparse``)."""
import json
import math

import numpy as np
import pytest

from facebench.extraction import (Answer, answer_start, is_refusal, load_rule, reparse, reparse_summary, rule_names,
                                  yorn_words)
from facebench.prompts import load_prompt, load_reading, reading_identity
from facebench.registry import UnknownNameError

Y, N, X, R = "yes", "no", "invalid", "refusal"
NA = None  # the rule does not read the template's language
# (template, answer, facebench@v2, vlmevalkit-yorn@v1), each expected reading worked out by hand
# from the rule's description (module docstring of facebench.extraction).
CORPUS = [
    ("paper-yesno", "Yes", Y, Y),
    ("paper-yesno", "Yes.", Y, Y),
    ("paper-yesno", "No.", N, N),
    ("paper-yesno", "NO", N, N),
    ("paper-yesno", "YES!", Y, Y),
    ("paper-yesno", "yes, they are the same person", Y, Y),
    ("paper-yesno", "Yes, the same person.", Y, Y),
    ("paper-yesno", "No, they are different people.", N, N),
    ("paper-yesno", "No. The noses and jawlines differ.", N, N),
    ("paper-yesno", "Yes (high confidence)", Y, Y),
    # markdown, quotes and labels
    ("paper-yesno", "**Yes**", Y, X),
    ("paper-yesno", "**No**", N, X),
    ("paper-yesno", "**No**, the eyes differ", N, X),
    ("paper-yesno", "**Answer:** Yes", Y, Y),
    ("paper-yesno", "Answer: Yes", Y, Y),
    ("paper-yesno", "Answer:No", N, X),
    ("paper-yesno", '"yes"', Y, Y),
    ("paper-yesno", "'No'", N, X),
    ("paper-yesno", "`yes`", Y, Y),
    ("paper-yesno", "> Yes", Y, Y),
    # both alternatives: no answer
    ("paper-yesno", "Yes/No", X, X),
    ("paper-yesno", "Yes / No", X, X),
    ("paper-yesno", "yes or no", X, X),
    ("paper-yesno", "Yes and No", X, X),
    ("paper-yesno", "Yes, there is no doubt.", Y, X),
    # trailing answers and hedges
    ("paper-yesno", "Based on the facial features, yes.", X, Y),
    ("paper-yesno", "The two images show the same person. Yes.", X, Y),
    ("paper-yesno", "It is likely that they are the same person, yes.", X, Y),
    ("paper-yesno", "Likely yes.", X, Y),
    ("paper-yesno", "I'd say yes", X, Y),
    ("paper-yesno", "Same person: yes", X, Y),
    ("paper-yesno", "Probably not.", X, X),
    ("paper-yesno", "Not the same person.", X, X),
    ("paper-yesno", "There is no way to tell.", X, N),
    ("paper-yesno", "Unclear", X, X),
    ("paper-yesno", "I cannot determine that from these images.", X, X),
    ("paper-yesno", "The first image shows a man with glasses", X, X),
    ("paper-yesno", "Yesterday", X, X),
    ("paper-yesno", "Nope", X, X),
    ("paper-yesno", "", X, X),
    # refusals
    ("paper-yesno", "Sorry, I can't help with identifying people.", R, R),
    ("paper-yesno", "I’m sorry, but I cannot identify real people from images.", R, R),
    ("paper-yesno", "As an AI, I don't compare the faces of real people.", R, R),
    ("paper-yesno", "No, I can't help with identifying people.", R, N),
    # think blocks
    ("paper-yesno", "<think>The jawlines match.</think>\nYes.", Y, Y),
    ("paper-yesno", "<think>\nDifferent noses.\n</think>\n\nNo", N, N),
    ("paper-yesno", "<think>\nNo obvious differences in the eyes.\n</think>\nYes", Y, X),  # "no" in the think block
    # "> " occurs, so every ">" is deleted and the block's first word is glued to "think": "thinkno"
    ("paper-yesno", "<think>No obvious differences in the eyes.</think> Yes", Y, Y),
    ("paper-yesno", "<think>Let me compare the eyes", X, X),
    ("paper-yesno", "<think>I should not identify people.</think> Sorry, I can't help with that.", R, R),
    # French
    ("fr-ouinon", "Oui.", Y, NA),
    ("fr-ouinon", "Non, ce sont deux personnes différentes.", N, NA),
    ("fr-ouinon", "**Oui**", Y, NA),
    ("fr-ouinon", "Réponse : oui", Y, NA),
    ("fr-ouinon", "Oui/Non", X, NA),
    ("fr-ouinon", "oui ou non", X, NA),
    ("fr-ouinon", "Nonobstant", X, NA),
    ("fr-ouinon", "Yes", X, NA),
    ("fr-ouinon", "Je ne peux pas déterminer s'il s'agit de la même personne.", X, NA),
    ("fr-ouinon", "Désolé, je ne peux pas identifier des personnes réelles.", R, NA),
    # German
    ("de-janein", "Ja.", Y, NA),
    ("de-janein", "Nein, das sind zwei verschiedene Personen.", N, NA),
    ("de-janein", "Antwort: Ja", Y, NA),
    ("de-janein", "Ja, als Kind und als Erwachsener.", Y, NA),
    ("de-janein", "Ja oder nein", X, NA),
    ("de-janein", "Jawohl", X, NA),
    ("de-janein", "Vielleicht", X, NA),
    ("de-janein", "Es tut mir leid, ich kann keine Personen identifizieren.", R, NA),
    # Chinese
    ("zh-shifou", "是", Y, NA),
    ("zh-shifou", "是的，是同一个人。", Y, NA),
    ("zh-shifou", "否", N, NA),
    ("zh-shifou", "不是同一个人", N, NA),
    ("zh-shifou", "答案：是", Y, NA),
    ("zh-shifou", "「否」", N, NA),
    ("zh-shifou", "**是**", Y, NA),
    ("zh-shifou", "是/否", X, NA),
    ("zh-shifou", "是或否", X, NA),
    ("zh-shifou", "无法判断", X, NA),
    ("zh-shifou", "抱歉，我无法识别图片中的人物。", R, NA),
    ("zh-shifou", "<think>两张脸的眼睛不同。</think>否", N, NA),
]
CODES = {Y: (1, False), N: (0, False), X: (-1, False), R: (-1, True)}


def reading(answer):
    return {(1, False): Y, (0, False): N, (-1, False): X, (-1, True): R}[(answer.decision, answer.refusal)]


def test_the_corpus_is_large_and_covers_every_template_language():
    assert len(CORPUS) >= 50
    assert {load_prompt(t).language for t, *_ in CORPUS} == {"en", "fr", "de", "zh"}
    assert {f for *_, f, _ in CORPUS} == {Y, N, X, R}


@pytest.mark.parametrize("template, text, expected, _", CORPUS)
def test_facebench_rule(template, text, expected, _):
    answer = load_prompt(template).parse(text, rule="facebench")
    assert reading(answer) == expected and math.isnan(answer.value)


@pytest.mark.parametrize("template, text, _, expected", [c for c in CORPUS if c[3] is not NA])
def test_vlmevalkit_yorn_rule(template, text, _, expected):
    assert reading(load_prompt(template).parse(text, rule="vlmevalkit-yorn")) == expected


def test_the_rules_disagree_where_the_issue_says():
    # On the answers VLMEvalKit's rule reads as yes, ours rejects the trailing and hedged ones;
    # ours reads bold answers that VLMEvalKit leaves glued to their asterisks.
    p = load_prompt("paper-yesno")
    for text in ("Based on the facial features, yes.", "Likely yes."):
        assert (p.parse(text).decision, p.parse(text, rule="vlmevalkit-yorn").decision) == (-1, 1)
    for text, d in (("**Yes**", 1), ("**No**", 0)):
        assert (p.parse(text).decision, p.parse(text, rule="vlmevalkit-yorn").decision) == (d, -1)


@pytest.mark.parametrize("text, words", [
    # VQA punctuation handling: a mark touching a blank anywhere is deleted, else it becomes a blank
    ("Yes, it is.", ["yes", "it", "is"]),
    ("yes,no", ["yes", "no"]),
    ("yes ,no", ["yes", "no"]),             # " ," occurs, so every comma is deleted: "yes no"
    ("(yes)", ["yes"]),
    ("It costs 1,000. Yes!", ["it", "costs", "1000", "yes"]),  # digit,digit: all punctuation deleted
    ("3.5 yes.", ["3.5", "yes"]),           # a period before a digit stays
    ("Answer: yes", ["answer:", "yes"]),    # ':' is not punctuation to it
])
def test_yorn_words_follow_the_vqa_punctuation_rule(text, words):
    assert yorn_words(text) == words


def test_rules_are_named_and_versioned_and_refuse_what_they_cannot_read():
    assert {"facebench", "vlmevalkit-yorn"} <= set(rule_names())
    assert load_rule("facebench").identity == "facebench@v2" and load_rule("facebench@v2").identity == "facebench@v2"
    with pytest.raises(ValueError, match="this checkout has facebench@v2"):
        load_rule("facebench@v1")
    with pytest.raises(UnknownNameError, match="vlmevalkit-yorn"):
        load_rule("vlmevalkit-yorm")
    with pytest.raises(ValueError, match="knows only en.*fr-ouinon@v1"):
        load_prompt("fr-ouinon").parse("Oui", rule="vlmevalkit-yorn")
    with pytest.raises(ValueError, match="score-0-100@v1 is number"):
        load_reading("score-0-100", "vlmevalkit-yorn")
    assert all(load_prompt(t).extraction == "facebench" for t in ("paper-yesno", "score-0-100", "zh-shifou"))


def test_the_rule_is_part_of_an_mllm_runs_identity():
    plain = reading_identity({})
    assert plain == {"prompt_template": "paper-yesno@v1", "extraction": "facebench@v2"}
    assert reading_identity({"extraction": "vlmevalkit-yorn"})["extraction"] == "vlmevalkit-yorn@v1"


@pytest.mark.parametrize("text, decision, value", [
    ("85", 1, 85.0), ("49.5", 0, 49.5), ("0", 0, 0.0), ("100", 1, 100.0), ("50", 1, 50.0),
    ("**85%**", 1, 85.0), ("85/100", 1, 85.0), ("Answer: 70", 1, 70.0), ("12.", 0, 12.0), ("85,5", 1, 85.5),
    ("<think>both have 2 eyes</think> 70", 1, 70.0), ("85\n\nThe faces share a jawline.", 1, 85.0),
    # not an answer that is a number
    ("There are 2 faces in the images.", -1, math.nan), ("2 faces", -1, math.nan), ("\x02Si\u2026l9nt", -1, math.nan),
    ("I'd say 85%.", -1, math.nan), ("Likelihood: 12", -1, math.nan), ("1. The first image", -1, math.nan),
    ("8/10", -1, math.nan), ("150", -1, math.nan), ("-3", -1, math.nan), ("high", -1, math.nan),
])
def test_number_rule_reads_only_answers_that_are_a_number(text, decision, value):
    answer = load_prompt("score-0-100").parse(text)
    assert answer.decision == decision
    assert answer.value == value or (math.isnan(value) and math.isnan(answer.value))


def test_refusals_are_never_different_and_inability_is_not_a_refusal():
    p = load_prompt("paper-yesno")
    assert p.parse("No, I can't help with identifying people.") == p.parse("Sorry, I can't help.")
    assert not is_refusal("I cannot determine that.") and not is_refusal("<think>sorry") and not is_refusal(None)
    assert load_prompt("score-0-100").parse("Sorry, I can't rate real people.") == Answer(-1, refusal=True)


# Generated tokens as real tokenizers split them (Qwen2's BPE: "**", "Yes", "**"; "Answer", ":",
# " Yes"; a quote apart), and multi-byte characters split into byte pieces.
def prefixes_of(tokens: list) -> list[str]:
    """What decoding the first k+1 tokens gives, as the backends compute it."""
    raw = [t.encode() if isinstance(t, str) else t for t in tokens]
    return [b"".join(raw[:k + 1]).decode("utf-8", errors="replace") for k in range(len(raw))]


@pytest.mark.parametrize("tokens, step", [
    (["Yes", "."], 0),
    (["**", "Yes", "**"], 1),
    (["Answer", ":", " Yes"], 2),
    (['"', "yes", '"'], 1),
    (["**", "Answer", ":**", " No"], 3),
    (["<think>", "\n", "Different", " eyes", ".", "</think>", "\n\n", "**", "No", "**"], 8),
    (["\n", " ", "`", "yes", "`"], 3),
    (["Based", " on", " the", " faces", ",", " yes"], 0),  # the answer starts where the rule reads it
    ([b"\xe3\x80", b"\x8c", b"\xe6\x98", b"\xaf", b"\xe3\x80\x8d"], 2),  # 「是」: a split quote, then a split 是
    (["答案", "：", "否"], 2),
    (["<think>", "hmm"], None),
    (["**", " "], None),
])
def test_score_position_skips_what_the_rule_skips(tokens, step):
    assert answer_start(prefixes_of(tokens)) == step


# -- re-reading stored runs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    """A stored paper-yesno run of the demo set whose answers are the English corpus,
    with the decisions the corpus says facebench@v2 gives (refusals stored as invalid)."""
    from facebench.datasets import load_demo
    from facebench.scoring import Run
    from facebench.store import RunStore

    demo = load_demo()
    english = [c for c in CORPUS if c[0] == "paper-yesno"]
    rows = []
    for i, pid in enumerate(demo.pairs["pair_id"]):
        _, text, fb, _ = english[i % len(english)]
        rows.append({"pair_id": int(pid), "score": 0.5 - i % 3, "decision": CODES[fb][0], "seconds": 0.01,
                     "raw_output": json.dumps({"answer": text, "answer_step": 0})})
    rows[-1] = {"pair_id": rows[-1]["pair_id"], "error": "RuntimeError: the server went away"}
    store = RunStore(tmp_path_factory.mktemp("corpus") / "m" / "demo")
    store.write(rows)
    store.write_manifest({"settings": {"prompt": "paper-yesno"}, "prompt_template": "paper-yesno@v1",
                          "extraction": "facebench@v2"})
    return Run("api:m@http://127.0.0.1:9/v1", demo, store, demo)


def test_reparse_under_the_runs_own_rule_gives_back_the_stored_decisions(corpus_run):
    before = corpus_run.store.rows()
    pairs = reparse(corpus_run)
    assert pairs.attrs["rule"] == pairs.attrs["own_rule"] == "facebench@v2"
    np.testing.assert_array_equal(pairs["decision"].to_numpy(float), pairs["stored"].to_numpy(float))
    summary = reparse_summary(pairs)
    stored = corpus_run.metrics()
    assert summary["n_changed"] == 0
    assert (summary["hard_accuracy"], summary["acquire_rate"]) == (stored["hard_accuracy"], stored["acquire_rate"])
    assert summary["n_refusals"] == stored["n_refusals"]
    # the refusal count, by hand from the corpus: refusal rows among the 53 answered pairs
    english = [c for c in CORPUS if c[0] == "paper-yesno"]
    assert summary["n_refusals"] == sum(english[i % len(english)][2] == R for i in range(53))
    assert corpus_run.store.rows().equals(before)  # nothing stored changed


def test_reparse_under_another_rule_changes_exactly_the_pairs_where_the_rules_disagree(corpus_run):
    pairs = reparse(corpus_run, "vlmevalkit-yorn")
    english = [c for c in CORPUS if c[0] == "paper-yesno"]
    rows = [english[i % len(english)] for i in range(53)]
    assert pairs["decision"].tolist()[:53] == [CODES[yorn][0] for *_, yorn in rows]
    assert math.isnan(pairs["decision"].iloc[53])  # the pair that failed has no answer to read
    summary = reparse_summary(pairs)
    assert summary["rule"] == "vlmevalkit-yorn@v1" and summary["own_rule"] == "facebench@v2"
    assert summary["n_changed"] == sum(CODES[fb][0] != CODES[yorn][0] for _, _, fb, yorn in rows)
    assert summary["n_refusals"] == sum(yorn == R for *_, yorn in rows)


def test_reparse_says_why_it_cannot(corpus_run, tmp_path):
    from dataclasses import replace

    from facebench.store import RunStore

    store = RunStore(tmp_path / "dlib" / "demo")
    store.write([{"pair_id": 0, "score": 0.1, "seconds": 0.0}])
    store.write_manifest({"settings": {}})
    with pytest.raises(ValueError, match="no prompt template"):
        reparse(replace(corpus_run, store=store))
    store.write_manifest({"settings": {"prompt": "paper-yesno"}, "prompt_template": "paper-yesno@v1"})
    with pytest.raises(ValueError, match="records no extraction rule"):
        reparse(replace(corpus_run, store=store))
    assert reparse(replace(corpus_run, store=store), "facebench").attrs["rule"] == "facebench@v2"
