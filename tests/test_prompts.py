import math

import pytest

from facebench.prompts import load_prompt, prompt_names, strip_thinking
from facebench.registry import UnknownNameError

# Answers as models really give them, and what the parser must make of them.
YESNO_ANSWERS = [
    ("Yes", 1), ("Yes.", 1), ("yes, they are", 1), (" Yes", 1), ("YES!", 1), ("**Yes**", 1),
    ("Answer: Yes", 1), ('"yes"', 1), ("\n\nyes\n", 1), ("<think>The jawlines match.</think>\nYes.", 1),
    ("No", 0), (" No", 0), ("NO.", 0), ("no, they are different people", 0), ("**No**, the eyes differ", 0),
    ("<think>\nDifferent noses.\n</think>\n\nNo", 0),
    ("I cannot determine that from these images.", -1), ("Yesterday", -1), ("None of them", -1),
    ("Nope", -1), ("", -1), ("   ", -1), ("<think>Let me compare the eyes", -1),
    ("The two images show the same person.", -1), ("Sorry, I can't help with identifying people.", -1),
]


@pytest.mark.parametrize("text, decision", YESNO_ANSWERS)
def test_paper_yesno_parser_reads_real_world_answers(text, decision):
    answer = load_prompt("paper-yesno").parse(text)
    assert answer.decision == decision
    assert math.isnan(answer.value)


@pytest.mark.parametrize("name, text, decision", [
    ("fr-ouinon", "Oui.", 1), ("fr-ouinon", "non, ce sont deux personnes", 0), ("fr-ouinon", "No", -1),
    ("de-janein", "Ja", 1), ("de-janein", "Nein.", 0), ("de-janein", "Jawohl", -1),
    ("zh-shifou", "是", 1), ("zh-shifou", "是的，是同一个人。", 1), ("zh-shifou", "否", 0),
    ("zh-shifou", "不是同一个人", 0), ("zh-shifou", "无法判断", -1),
])
def test_other_languages_use_their_own_answer_words(name, text, decision):
    assert load_prompt(name).parse(text).decision == decision


def test_every_template_loads_and_has_a_versioned_identity():
    assert {"paper-yesno", "score-0-100", "fr-ouinon", "de-janein", "zh-shifou"} <= set(prompt_names())
    for name in prompt_names():
        prompt = load_prompt(name)
        assert prompt.identity == f"{name}@v{prompt.version}"
        assert prompt.question and prompt.language


def test_unknown_template_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match="paper-yesno"):
        load_prompt("paper-yes-no")


def test_template_with_bare_yaml_yes_no_is_refused(tmp_path, monkeypatch):
    from facebench import prompts

    bad = tmp_path / "prompts.yaml"
    bad.write_text("templates:\n  t:\n    version: 1\n    kind: yesno\n    question: Same?\n"
                   "    answers:\n      same: [yes]\n      different: [no]\n")
    monkeypatch.setattr(prompts, "PROMPTS_FILE", bad)
    prompts._templates.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"prompts\.yaml.*'t'.*quoted"):
            prompts.load_prompt("t")
    finally:
        prompts._templates.cache_clear()


def test_strip_thinking_only_removes_a_leading_block():
    assert strip_thinking("Yes <think>x</think>") == "Yes <think>x</think>"
    assert strip_thinking("  <think>a\nb</think>No") == "No"
