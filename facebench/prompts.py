"""Prompt templates for MLLM verification (``prompts.yaml``).

A template is the question shown after the two face images, plus what counts
as an answer: for ``yesno`` templates the words meaning "same" and
"different" (in any language), for ``number`` templates a range and a
decision threshold, and the extraction rule that reads its answers by default
(:mod:`facebench.extraction`). :meth:`Prompt.parse` turns a model's free text
into a decision — 1 (same), 0 (different) or -1 (invalid) — and, for
``number`` templates, the value. An answer the rule cannot read is *invalid*:
it lowers the acquire rate and is never counted as "different".
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from facebench.extraction import DEFAULT_RULE, Answer, Rule, answer_start, load_rule, strip_thinking  # noqa: F401
from facebench.files import read_yaml
from facebench.paths import PACKAGE_DIR
from facebench.registry import UnknownNameError, suggest

PROMPTS_FILE = PACKAGE_DIR / "prompts.yaml"
DEFAULT_PROMPT = "paper-yesno"


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
    extraction: str = DEFAULT_RULE

    @property
    def identity(self) -> str:
        """``name@version``: what a run records, so a reworded template starts a new run."""
        return f"{self.name}@v{self.version}"

    def parse(self, text: str, *, rule: str | None = None) -> Answer:
        """Read a model's answer text under ``rule`` (default: the template's ``extraction``).

        Examples
        --------
        >>> p = load_prompt("paper-yesno")
        >>> [p.parse(t).decision for t in ["Yes.", " no", "<think>hmm</think> YES", "Yesterday", "Yes/No"]]
        [1, 0, 1, -1, -1]
        >>> p.parse("Based on the facial features, yes.", rule="vlmevalkit-yorn").decision
        1
        >>> load_prompt("score-0-100").parse("**85%**")
        Answer(decision=1, value=85.0, refusal=False)
        """
        return load_rule(rule or self.extraction).parse(self, text)


@lru_cache(maxsize=1)
def _templates() -> dict[str, dict]:
    doc = read_yaml(PROMPTS_FILE)
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
                  language=t.get("language", ""), source=t.get("source", ""),
                  extraction=t.get("extraction", DEFAULT_RULE))
    if kind == "yesno":
        answers = t.get("answers") or {}
        yes, no = tuple(answers.get("same") or ()), tuple(answers.get("different") or ())
        if not yes or not no or not all(isinstance(w, str) and w for w in yes + no):
            raise ValueError(f"{PROMPTS_FILE}: template {name!r} needs answers.same and answers.different, "
                             f"each a list of quoted words; got {answers!r}")
        clash = {w.casefold() for w in yes} & {w.casefold() for w in no}
        if clash:
            raise ValueError(f"{PROMPTS_FILE}: template {name!r} lists {sorted(clash)} as both yes and no")
        prompt = Prompt(**fields, yes=yes, no=no)
    else:
        prompt = Prompt(**fields, low=float(t["low"]), high=float(t["high"]), threshold=float(t["threshold"]))
    why = load_rule(prompt.extraction).cannot_read(prompt)
    if why:
        raise ValueError(f"{PROMPTS_FILE}: template {name!r} names extraction {prompt.extraction!r}, but {why}")
    return prompt


def load_reading(prompt: str = DEFAULT_PROMPT, extraction: str | None = None) -> tuple[Prompt, Rule]:
    """The template ``prompt`` and the rule that reads its answers: ``extraction``, else the template's own.

    >>> [x.identity for x in load_reading("paper-yesno", "vlmevalkit-yorn")]
    ['paper-yesno@v1', 'vlmevalkit-yorn@v1']
    """
    template = load_prompt(prompt)
    rule = load_rule(extraction or template.extraction)
    why = rule.cannot_read(template)
    if why:
        raise ValueError(f"model settings prompt={prompt!r}, extraction={extraction!r}: {why}")
    return template, rule


def reading_identity(settings: dict) -> dict:
    """What an MLLM run's template and rule add to its identity: both change the stored
    decisions (and a template's wording the scores), so either starts a new run."""
    template, rule = load_reading(settings.get("prompt", DEFAULT_PROMPT), settings.get("extraction"))
    return {"prompt_template": template.identity, "extraction": rule.identity}
