"""Answer extraction: the named, versioned rules that turn an MLLM's answer text
into a decision, and re-reading stored runs under any of them.

A rule (``extraction.yaml``) reads a template's answer (:class:`~facebench.prompts.Prompt`)
into an :class:`Answer`: decision 1 (same), 0 (different) or -1 (invalid), and
whether the answer is a refusal. Invalid answers, refusals included, lower the
acquire rate and are never counted as "different".

``facebench`` (the default of every template), in order:

1. A leading ``<think>…</think>`` block (reasoning models) is dropped; an
   unclosed one leaves nothing to read (invalid).
2. A refusal (a phrase of ``extraction.yaml``'s multilingual list, anywhere in
   what is left) is invalid and marked as a refusal, even after "No, …".
3. Leading blanks, quotes, markdown emphasis and an answer label
   ("Answer:", "Réponse :", "答案：") are dropped (:func:`answer_offset`; the
   score is read at the same place, :func:`answer_start`).
4. ``yesno``: the answer must *start* with one of the template's words,
   case-insensitively; for words in cased scripts (Latin, …) the next
   character must not be a letter, so "Yesterday" is not "yes" and "non" is
   not "no"; for uncased scripts (是, 否) a prefix suffices ("是的" is yes).
   "Yes/No", "yes or no", "是或否" (both alternatives) are invalid, and so is
   anything else ("Likely yes", "The first image…").
5. ``number``: the first line must be a number, optionally with ``%`` or
   ``/<high>`` and trailing markup, inside ``[low, high]``; its decision is
   ``number >= threshold``. "There are 2 faces" is invalid.

``vlmevalkit-yorn`` is VLMEvalKit's ``YOrN_Extraction`` (MME, POPE): the answer
lower-cased, punctuation replaced as the VQA evaluation code does, split on
blanks; yes if the word "yes" is among the words and "no" is not, no for the
reverse, otherwise invalid. It knows only the English words, so it reads only
English templates; markdown stays glued to the word ("**yes**" is not "yes").
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
import pandas as pd

from facebench.files import read_yaml
from facebench.paths import PACKAGE_DIR
from facebench.registry import UnknownNameError, suggest

EXTRACTION_FILE = PACKAGE_DIR / "extraction.yaml"
DEFAULT_RULE = "facebench"
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_MARKS = "\\s\"'`*_«»“”„「『"  # quotes and emphasis around an answer
# A number answer's first line: the number, optionally "%" or "/<high>", then only markup and a full stop.
_NUMBER_ANSWER = re.compile(r"([-+]?\d+(?:[.,]\d+)?)\s*(?:%|/\s*(\d+(?:\.\d+)?))?[\s\"'`*_.!。」』»”]*")


@dataclass(frozen=True)
class Answer:
    """A parsed answer: ``decision`` 1 (same), 0 (different) or -1 (invalid);
    ``value`` for number templates; ``refusal`` for an invalid answer that declines the task."""

    decision: int
    value: float = math.nan
    refusal: bool = False


def strip_thinking(text: str) -> str | None:
    """``text`` without a leading ``<think>…</think>`` block; None if the block never closes.

    >>> strip_thinking("<think>They differ.</think>No")
    'No'
    >>> strip_thinking("<think>still thinking") is None
    True
    """
    if text.lstrip().startswith("<think>"):
        m = _THINK.match(text)
        return text[m.end():] if m else None
    return text


def answer_offset(text: str) -> int | None:
    """Where the answer starts in ``text``: after a think block, blanks, quotes,
    markup and an answer label; None when nothing is left to read.

    >>> text = '<think>x</think>\\n**Answer:** "Yes"'
    >>> text[answer_offset(text):]
    'Yes"'
    >>> answer_offset("**  ") is None
    True
    """
    body = strip_thinking(text)
    if body is None:
        return None
    start = len(text) - len(body) + _lead().match(body).end()
    return start if start < len(text) else None


def answer_start(prefixes: list[str]) -> int | None:
    """The index of the generated token that starts the answer, i.e. the first
    token that writes past :func:`answer_offset` (think blocks, blanks, quotes,
    markup and labels are skipped exactly as the ``facebench`` rule skips them);
    None when the tokens hold no answer.

    ``prefixes[k]`` is the text of the first ``k + 1`` generated tokens decoded
    together. A character split over several tokens decodes as "\\ufffd" until
    its last piece: the answer starts at its first piece, but a split quote
    before the answer does not start it.

    >>> answer_start(["**", "**Yes", "**Yes**"])
    1
    >>> answer_start(["Answer", "Answer:", "Answer: Yes"])
    2
    >>> answer_start(["<think>", "<think>x</think>", "<think>x</think>\\n", "<think>x</think>\\nNo"])
    3
    >>> answer_start([" ", "  "]) is None
    True
    """
    start = answer_offset(prefixes[-1]) if prefixes else None
    if start is None:
        return None
    for k in range(len(prefixes)):
        settled = next((p for p in prefixes[k:] if not p.endswith("\ufffd")), prefixes[-1])
        if len(settled) > start:
            return k
    return None


def is_refusal(text: str | None) -> bool:
    """Whether ``text`` (after any think block) declines the task, by the multilingual
    list of ``extraction.yaml``.

    >>> [is_refusal(t) for t in ["Sorry, I can’t help with identifying people.", "抱歉，我无法识别人物。",
    ...                          "I cannot determine that.", "No"]]
    [True, True, False, False]
    """
    body = strip_thinking(text) if isinstance(text, str) else None
    if not body:
        return False
    return _refusals().search(" ".join(body.replace("’", "'").casefold().split())) is not None


@dataclass(frozen=True)
class Rule:
    """One rule of ``extraction.yaml``; see the module docstring for what each decides."""

    name: str
    version: int
    kinds: tuple[str, ...]
    languages: tuple[str, ...] | None
    summary: str
    source: str
    read: Callable = field(repr=False, compare=False)

    @property
    def identity(self) -> str:
        """``name@vN``: what a run records as the rule of its stored decisions."""
        return f"{self.name}@v{self.version}"

    def cannot_read(self, prompt) -> str | None:
        """Why this rule cannot read ``prompt``'s answers (kind or language), or None."""
        if prompt.kind not in self.kinds:
            return f"rule {self.identity} reads {'/'.join(self.kinds)} templates; {prompt.identity} is {prompt.kind}"
        if self.languages is not None and prompt.language not in self.languages:
            return (f"rule {self.identity} knows only {'/'.join(self.languages)} answer words; "
                    f"{prompt.identity} asks in {prompt.language!r}")
        return None

    def parse(self, prompt, text: str) -> Answer:
        """``text``, an answer to ``prompt``, read by this rule.

        >>> from facebench.prompts import load_prompt
        >>> p = load_prompt("paper-yesno")
        >>> [load_rule(r).parse(p, "Likely yes.").decision for r in ("facebench", "vlmevalkit-yorn")]
        [-1, 1]
        """
        why = self.cannot_read(prompt)
        if why:
            raise ValueError(why)
        return self.read(prompt, text)


def _facebench(prompt, text: str) -> Answer:
    body = strip_thinking(text)
    if body is None:
        return Answer(-1)
    if is_refusal(body):
        return Answer(-1, refusal=True)
    body = body[_lead().match(body).end():]
    if prompt.kind == "number":
        return _number(prompt, body)
    matches = [(len(w), d) for d, words in ((1, prompt.yes), (0, prompt.no)) for w in words if _starts_with(body, w)]
    if not matches:
        return Answer(-1)
    size, decision = max(matches)
    rest = _alternative().match(body, size)
    others = prompt.no if decision else prompt.yes
    if rest and any(_starts_with(body[rest.end():], w) for w in others):
        return Answer(-1)
    return Answer(decision)


def _number(prompt, body: str) -> Answer:
    m = _NUMBER_ANSWER.fullmatch(body.split("\n", 1)[0])
    if not m or (m.group(2) and float(m.group(2)) != prompt.high):
        return Answer(-1)
    value = float(m.group(1).replace(",", "."))
    if not prompt.low <= value <= prompt.high:
        return Answer(-1)
    return Answer(int(value >= prompt.threshold), value)


def _starts_with(body: str, word: str) -> bool:
    if not body[:len(word)].casefold() == word.casefold():
        return False
    rest = body[len(word):]
    cased = word[-1].lower() != word[-1].upper()
    return not (cased and rest and rest[0].isalpha())


# VLMEvalKit's YOrN_Extraction and the VQA evaluation's processPunctuation it calls.
_YORN_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_YORN_COMMA = re.compile(r"(\d)(,)(\d)")
_YORN_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def yorn_words(text: str) -> list[str]:
    """The words VLMEvalKit's YOrN rule looks for "yes" and "no" among.

    Each punctuation mark is deleted where it touches a blank somewhere in the
    text (or the text holds a digit-comma-digit), else replaced by a blank;
    periods not followed by a digit are deleted. ``*``, ``:`` and ``'`` are not
    punctuation to it. The original passes ``re.UNICODE`` (32) where the count
    of periods to delete goes; that is kept.

    >>> yorn_words("Based on the facial features, yes.")
    ['based', 'on', 'the', 'facial', 'features', 'yes']
    >>> yorn_words("**Yes**/No")
    ['**yes**', 'no']
    """
    s = text.lower()
    glued = _YORN_COMMA.search(s) is not None
    out = s
    for p in _YORN_PUNCT:
        out = out.replace(p, "" if (p + " " in s or " " + p in s or glued) else " ")
    return _YORN_PERIOD.sub("", out, count=int(re.UNICODE)).split()


def _yorn(prompt, text: str) -> Answer:
    words = yorn_words(text)
    if "yes" in words and "no" not in words:
        return Answer(1)
    if "no" in words and "yes" not in words:
        return Answer(0)
    return Answer(-1, refusal=is_refusal(text))


_RULES: dict[str, Callable[..., Answer]] = {"facebench": _facebench, "vlmevalkit-yorn": _yorn}


@lru_cache(maxsize=1)
def _doc() -> dict:
    return read_yaml(EXTRACTION_FILE)


@lru_cache(maxsize=1)
def _lead() -> re.Pattern:
    labels = "|".join(re.escape(w) for w in sorted(_doc()["labels"], key=len, reverse=True))
    return re.compile(rf"^[{_MARKS}#>:]*(?:(?:{labels})\s*[:：]\s*)?[{_MARKS}]*", re.IGNORECASE)


@lru_cache(maxsize=1)
def _alternative() -> re.Pattern:
    words = sorted(_doc()["alternatives"], key=len, reverse=True)
    return re.compile(rf"\s*(?:{'|'.join(re.escape(w) for w in words)})\s*", re.IGNORECASE)


@lru_cache(maxsize=1)
def _refusals() -> re.Pattern:
    # A phrase that begins or ends with a letter of a cased script must not run into
    # another letter ("als ki" is not in "als Kind"); Chinese phrases have no such edge.
    def edge(c: str, look: str) -> str:
        return look if c.lower() != c.upper() else ""

    phrases = (" ".join(p.replace("’", "'").casefold().split()) for ps in _doc()["refusals"].values() for p in ps)
    return re.compile("|".join(edge(p[0], r"(?<![^\W\d_])") + re.escape(p) + edge(p[-1], r"(?![^\W\d_])")
                               for p in phrases))


def rule_names() -> list[str]:
    return sorted(_doc()["rules"])


def load_rule(name: str) -> Rule:
    """The rule ``name`` (or ``name@vN``, which must be this checkout's version) of ``extraction.yaml``.

    >>> load_rule("vlmevalkit-yorn").identity
    'vlmevalkit-yorn@v1'
    """
    base, _, version = name.partition("@")
    rules = _doc()["rules"]
    if base not in rules:
        raise UnknownNameError(suggest(base, rules, what="extraction rule"))
    if base not in _RULES:
        raise ValueError(f"{EXTRACTION_FILE}: rule {base!r} has no implementation in facebench/extraction.py")
    r = rules[base]
    rule = Rule(base, int(r["version"]), tuple(r["kinds"]), tuple(r["languages"]) if r.get("languages") else None,
                " ".join(r["summary"].split()), " ".join(r["source"].split()), _RULES[base])
    if version and version != f"v{rule.version}":
        raise ValueError(f"extraction rule {name}: this checkout has {rule.identity}; decisions made under "
                         "another version can only be re-read under a rule this checkout has")
    return rule


# -- stored runs ---------------------------------------------------------------------------------

def raw_fields(value) -> dict:
    """A stored ``raw_output`` as a dict: its JSON object, or ``{"answer": text}`` for plain text."""
    if not isinstance(value, str):
        return {}
    try:
        doc = json.loads(value)
    except ValueError:
        return {"answer": value}
    return doc if isinstance(doc, dict) else {"answer": str(doc)}


def answer_text(value) -> str | None:
    """The answer text a stored ``raw_output`` holds, or None (an error, an embedding model)."""
    answer = raw_fields(value).get("answer")
    return answer if isinstance(answer, str) else None


def run_reading(run):
    """The template a run was asked with (None for a model without one) and the
    identity of the rule its manifest records (None when it records none).

    Raises ValueError when ``prompts.yaml`` now holds another version of the template.
    """
    from facebench.prompts import load_prompt

    m = run.manifest
    template = m.get("prompt_template")
    if not template:
        return None, m.get("extraction")
    prompt = load_prompt((m.get("settings") or {}).get("prompt") or template.partition("@")[0])
    if prompt.identity != template:
        raise ValueError(f"{run.store.dir}: made with template {template}, but prompts.yaml now has "
                         f"{prompt.identity}; its answer words may differ")
    return prompt, m.get("extraction")


def reparse(run, rule: str | None = None) -> pd.DataFrame:
    """The stored answers of ``run`` read again under ``rule`` (default: the run's own),
    loading no model and changing nothing stored.

    Returns one row per stored pair: the dataset's columns, ``answer``, ``stored``
    (the stored decision), ``decision`` and ``refusal`` under ``rule``, and
    ``score`` (the stored one; for number templates the number read again).
    ``attrs`` holds ``rule``, ``own_rule`` (the rule of the stored decisions)
    and ``template``. Pairs without an answer (errors) keep no decision.

    Raises
    ------
    ValueError
        When the run has no prompt template (not an MLLM run), was made with
        another version of its template, records no rule and none is given,
        or ``rule`` cannot read the template (kind or language).
    """
    prompt, own = run_reading(run)
    where = f"{run.store.dir} ({run.model} on {run.dataset.name})"
    if prompt is None:
        raise ValueError(f"{where}: no prompt template in its manifest; only MLLM runs have answers to re-parse")
    if rule is None and own is None:
        raise ValueError(f"{where}: records no extraction rule (made before rules were named); pass one "
                         f"of {', '.join(rule_names())}")
    chosen = load_rule(rule or own)
    why = chosen.cannot_read(prompt)
    if why:
        raise ValueError(f"{where}: {why}")
    t = run.table[run.table["stored"]]
    answers = [answer_text(v) for v in t["raw_output"]]
    # A model answers in a few distinct texts ("Yes.", "No."): each is read once.
    readings = {a: chosen.read(prompt, a) for a in set(answers) if a is not None}
    read = [readings.get(a) for a in answers]
    out = t[list(run.dataset.pairs.columns)].assign(
        answer=answers, stored=t["decision"], score=t["score"],
        decision=[math.nan if a is None else a.decision for a in read],
        refusal=[a is not None and a.refusal for a in read])
    if prompt.kind == "number":
        out["score"] = [math.nan if a is None else a.value for a in read]
    out.attrs.update(rule=chosen.identity, own_rule=own, template=prompt.identity)
    return out.reset_index(drop=True)


def reparse_summary(pairs: pd.DataFrame) -> dict:
    """What :func:`reparse`'s pairs give: own-answer accuracy over valid answers
    (``hard_accuracy``) and over all pairs (``hard_accuracy_all``), acquire rate,
    refusals, and how many decisions differ from the stored ones (``n_changed``)."""
    from facebench.metrics import verification_report

    r = verification_report(pairs["score"].to_numpy(float), pairs["same"].to_numpy(), pairs["fold"].to_numpy(),
                            decisions=pairs["decision"].to_numpy(float))
    new, old = pairs["decision"].to_numpy(float), pairs["stored"].to_numpy(float)
    changed = ~((new == old) | (np.isnan(new) & np.isnan(old)))
    n = len(pairs)
    return {"rule": pairs.attrs.get("rule"), "own_rule": pairs.attrs.get("own_rule"), "n_pairs": n,
            **{k: r[k] for k in ("hard_accuracy", "hard_accuracy_all", "acquire_rate")},
            "n_refusals": int(pairs["refusal"].sum()),
            "refusal_rate": float(pairs["refusal"].mean()) if n else math.nan,
            "n_changed": int(changed.sum())}
