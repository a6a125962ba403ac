"""Prompt templates for MLLM verification (``prompts.yaml``) and the parser of their answers.

A template is the question shown after the two face images, plus what counts
as an answer: for ``yesno`` templates the words meaning "same" and
"different" (in any language), for ``number`` templates a range and a
decision threshold. :meth:`Prompt.parse` turns a model's free text into a
decision — 1 (same), 0 (different) or -1 (invalid) — and, for ``number``
templates, the value. An answer the parser cannot read is *invalid*: it lowers
the acquire rate and is never counted as "different".

The parser's rules, in order:

1. A leading ``<think>…</think>`` block (reasoning models) is dropped; an
   unclosed one leaves nothing to read (invalid).
2. Leading blanks, quotes, markdown emphasis and an ``Answer:`` label are dropped.
3. ``yesno``: the answer must *start* with one of the template's words,
   case-insensitively; for words in cased scripts (Latin, …) the next
   character must not be a letter, so "Yesterday" is not "yes" and "non" is
   not "no"; for uncased scripts (是, 否) a prefix suffices ("是的" is yes).
   Anything else ("I cannot determine", "The first image…") is invalid.
4. ``number``: the first number in the text, if it lies in ``[low, high]``;
   its decision is ``number >= threshold``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import yaml

from facebench.paths import PACKAGE_DIR
from facebench.registry import UnknownNameError, suggest

PROMPTS_FILE = PACKAGE_DIR / "prompts.yaml"
DEFAULT_PROMPT = "paper-yesno"
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_LEAD = re.compile(r"^[\s\"'`*_#>:«»“”„「『]*(?:answer\s*[:：]\s*)?[\s\"'`*_«»“”„「『]*", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


@dataclass(frozen=True)
class Answer:
    """A parsed answer: ``decision`` 1 (same), 0 (different) or -1 (invalid); ``value`` for number templates."""

    decision: int
    value: float = math.nan


@dataclass(frozen=True)
class Prompt:
    """One template of ``prompts.yaml``; see the module docstring for the answer rules."""

    name: str
    version: int
    kind: str
    question: str
    language: str
    source: str = ""
    yes: tuple[str, ...] = ()
    no: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 100.0
    threshold: float = 50.0

    @property
    def identity(self) -> str:
        """``name@version``: what a run records, so a reworded template starts a new run."""
        return f"{self.name}@v{self.version}"

    def parse(self, text: str) -> Answer:
        """Read a model's answer text.

        Examples
        --------
        >>> p = load_prompt("paper-yesno")
        >>> [p.parse(t).decision for t in ["Yes.", " no", "<think>hmm</think> YES", "Yesterday", "I cannot tell"]]
        [1, 0, 1, -1, -1]
        >>> load_prompt("score-0-100").parse("I'd say 85%.")
        Answer(decision=1, value=85.0)
        """
        body = strip_thinking(text)
        if body is None:
            return Answer(-1)
        body = _LEAD.sub("", body, count=1)
        if self.kind == "number":
            m = _NUMBER.search(body)
            value = float(m.group().replace(",", ".")) if m else math.nan
            if not self.low <= value <= self.high:  # NaN fails too
                return Answer(-1)
            return Answer(int(value >= self.threshold), value)
        matches = [(len(w), d) for d, words in ((1, self.yes), (0, self.no)) for w in words if _starts_with(body, w)]
        return Answer(max(matches)[1]) if matches else Answer(-1)


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


def answer_start(prefixes: list[str]) -> int | None:
    """The index of the generated token that starts the answer, after a leading
    ``<think>…</think>`` block and blanks; None when the tokens hold no answer.

    ``prefixes[k]`` is the text of the first ``k + 1`` generated tokens (decoded
    together, so multi-byte characters split over tokens come out whole).

    >>> answer_start(["<think>", "<think>x</think>", "<think>x</think>\\n", "<think>x</think>\\nNo"])
    3
    >>> answer_start([" ", "  "]) is None
    True
    """
    before = ""
    for k, after in enumerate(prefixes):
        body_before, body_after = strip_thinking(before), strip_thinking(after)
        if body_before is not None and not body_before.strip() and body_after is not None and body_after.strip():
            return k
        before = after
    return None


def _starts_with(body: str, word: str) -> bool:
    if not body[:len(word)].casefold() == word.casefold():
        return False
    rest = body[len(word):]
    cased = word[-1].lower() != word[-1].upper()
    return not (cased and rest and rest[0].isalpha())


@lru_cache(maxsize=1)
def _templates() -> dict[str, dict]:
    doc = yaml.safe_load(PROMPTS_FILE.read_text())
    return doc["templates"]


def prompt_names() -> list[str]:
    return sorted(_templates())


def load_prompt(name: str) -> Prompt:
    """The template ``name`` from ``prompts.yaml``; a typo suggests the closest names."""
    templates = _templates()
    if name not in templates:
        raise UnknownNameError(suggest(name, templates, what="prompt template"))
    t = templates[name]
    kind = t.get("kind")
    if kind not in ("yesno", "number"):
        raise ValueError(f"{PROMPTS_FILE}: template {name!r} has kind {kind!r}; expected 'yesno' or 'number'")
    fields = dict(name=name, version=int(t["version"]), kind=kind, question=t["question"].strip(),
                  language=t.get("language", ""), source=t.get("source", ""))
    if kind == "yesno":
        answers = t.get("answers") or {}
        yes, no = tuple(answers.get("same") or ()), tuple(answers.get("different") or ())
        if not yes or not no or not all(isinstance(w, str) and w for w in yes + no):
            raise ValueError(f"{PROMPTS_FILE}: template {name!r} needs answers.same and answers.different, "
                             f"each a list of quoted words; got {answers!r}")
        clash = {w.casefold() for w in yes} & {w.casefold() for w in no}
        if clash:
            raise ValueError(f"{PROMPTS_FILE}: template {name!r} lists {sorted(clash)} as both yes and no")
        return Prompt(**fields, yes=yes, no=no)
    return Prompt(**fields, low=float(t["low"]), high=float(t["high"]), threshold=float(t["threshold"]))
