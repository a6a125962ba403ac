"""Published numbers (book/published_results.yaml), checked, next to this checkout's."""
from __future__ import annotations


import pandas as pd

from facebench.files import read_yaml
from facebench.paths import in_checkout
from facebench.report.collecting import NOT_RUN, _complete
from facebench.report.tables import _pct

PUBLISHED_KEYS = ("id", "system", "dataset", "metric", "value", "source", "verified")


PUBLISHED_METRICS = {"accuracy_mean": "k-fold accuracy", "hard_accuracy": "own-threshold accuracy",
                     "human_accuracy": "human judgement (the source's own procedure)",
                     "accuracy": "accuracy (protocol not known)"}


def load_published(path) -> list[dict]:
    """The published numbers of ``path`` (see book/published_results.yaml),
    checked: every entry has its keys, a known metric, a value in (0, 100] and a
    source with a title and a URL. Errors name the file and the entry."""
    path = in_checkout(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ValueError(f"{path}: expected a mapping with a 'results' list")
    for i, e in enumerate(doc["results"]):
        name = e.get("id", "no id") if isinstance(e, dict) else repr(e)
        where = f"{path}: entry {i} ({name})"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: not a mapping")
        missing = [k for k in PUBLISHED_KEYS if k not in e]
        if missing:
            raise ValueError(f"{where}: lacks {missing}")
        if e["metric"] not in PUBLISHED_METRICS:
            raise ValueError(f"{where}: metric {e['metric']!r} is not one of {sorted(PUBLISHED_METRICS)}")
        # Accuracies are printed in %; a value of 1 or less is a fraction typed by mistake.
        if isinstance(e["value"], bool) or not isinstance(e["value"], (int, float)) or not 1 < e["value"] <= 100:
            raise ValueError(f"{where}: value must be a percentage in (1, 100] (99.38, not 0.9938); "
                             f"got {e['value']!r}")
        source = e["source"]
        if not isinstance(source, dict) or not source.get("title") or not source.get("url"):
            raise ValueError(f"{where}: source needs at least a title and a url")
    return doc["results"]


def _source_text(s: dict) -> str:
    parts = [s.get("authors"), str(s["year"]) if s.get("year") else None, f"*{s['title']}*", s.get("where")]
    return ", ".join(p for p in parts if p) + f". <{s['url']}>"


def _source_numbers(entries: list[dict]) -> dict[str, int]:
    """One number per distinct source, in order of first use."""
    numbers: dict[str, int] = {}
    for e in entries:
        numbers.setdefault(_source_text(e["source"]), len(numbers) + 1)
    return numbers


def published_sources(path):
    """The numbered list of sources that :func:`published_table`'s "Source" column refers to, as Markdown."""
    from IPython.display import Markdown

    numbers = _source_numbers(load_published(path))
    return Markdown("\n".join(f"{n}. {text}" for text, n in numbers.items()))


def _matches(run_settings: dict | None, wanted: dict | None) -> bool:
    return all((run_settings or {}).get(k) == v for k, v in (wanted or {}).items())


def published_table(results: pd.DataFrame, path) -> pd.DataFrame:
    """Published numbers next to this checkout's: the same model (and, where the
    entry names them, settings) on the same dataset, same metric. A number
    nobody has reproduced here says "not run"; each entry's note (what limits
    the comparison) is shown with it, and a source that does not name its
    dataset says so."""
    done = _complete(results)
    entries = load_published(path)
    numbers = _source_numbers(entries)
    rows = []
    for e in entries:
        ours = NOT_RUN
        if e.get("model") is None:
            ours = f"{NOT_RUN} (not a model here)"
        elif not done.empty:
            hit = done[(done["model"] == e["model"]) & (done["dataset"] == e["dataset"])]
            hit = hit[[_matches(s, e.get("settings")) for s in hit["settings"]]]
            if not hit.empty:
                r = hit.iloc[0]
                ours = (f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
                        if e["metric"] == "accuracy_mean" else _pct(r.get(e["metric"])))
        wanted = ", ".join(f"{k}={v}" for k, v in (e.get("settings") or {}).items())
        rows.append({"System": e["system"] + (f" ({wanted})" if wanted else ""),
                     "Dataset": e["dataset"] or "not named", "Metric": PUBLISHED_METRICS[e["metric"]],
                     "Published (%)": f"{e['value']:.2f}", "This checkout (%)": ours,
                     "Source": f"[{numbers[_source_text(e['source'])]}]",
                     "Checked": "yes" if e["verified"] else "unverified", "Note": " ".join(str(e.get("note") or "").split())})
    return pd.DataFrame(rows).set_index(["System", "Dataset"])
