"""MLLMs behind an OpenAI-compatible chat-completions server (vLLM, SGLang,
``transformers serve``, hosted APIs): ``--model api:<model name>@<base url>``.

Each pair is one request: both images as base64 PNG data URLs in one user
message, then the prompt template's question; temperature 0. The answer text
is parsed as the local backend parses it. When the server returns
``logprobs`` (vLLM, SGLang, OpenAI), the score is the same log-odds as the
local backend's — log P(yes) − log P(no) over the answer-word variants found
among ``top_logprobs`` at the answer's first token; a side absent from the top
list counts as the smallest listed log-prob, an upper bound. When it does not
(``transformers serve``), the score is the decision itself (1 / 0, NaN when
invalid) and each pair's ``raw_output`` says ``"score_from": "decision"``, so
the report can say that ROC and k-fold accuracy rest on hard decisions.

The API key is read from the environment variable named by ``api_key_env``
(``OPENAI_API_KEY`` by default) at request time; it is never stored in the
settings, the manifest, the results or an error message.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import math
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from facebench.models import BACKENDS, PairVerifier
from facebench.prompts import DEFAULT_PROMPT, Prompt, answer_start, load_prompt

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class APIError(RuntimeError):
    """A request the server refused or that failed after every retry."""


def split_spec(model: str) -> tuple[str, str]:
    """``"name@http://host:8000/v1"`` → ``("name", "http://host:8000/v1")``.

    >>> split_spec("Qwen/Qwen2.5-VL-7B-Instruct@http://127.0.0.1:8000/v1")
    ('Qwen/Qwen2.5-VL-7B-Instruct', 'http://127.0.0.1:8000/v1')
    """
    name, sep, url = model.rpartition("@")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise ValueError(f"api model {model!r}: expected <model name>@<base url>, "
                         "e.g. api:Qwen/Qwen2.5-VL-7B-Instruct@http://127.0.0.1:8000/v1")
    return name, url.rstrip("/")


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def logprob_score(content: list[dict], prompt: Prompt) -> tuple[float, int | None]:
    """Log-odds of the answer words at the answer's first token, from an OpenAI
    ``choices[0].logprobs.content`` list; ``(nan, None)`` when it holds no answer.

    Returns the score and the index of the token it was read at.

    >>> content = [{"token": "Yes", "logprob": -0.1, "top_logprobs": [
    ...     {"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": -2.4},
    ...     {"token": "yes", "logprob": -4.0}]}]
    >>> round(logprob_score(content, load_prompt("paper-yesno"))[0], 4)
    2.32
    """
    prefixes = list(itertools.accumulate(entry.get("token", "") for entry in content))
    i = answer_start(prefixes)
    if i is None:
        return math.nan, None
    entry = content[i]
    top = entry.get("top_logprobs") or [{"token": entry.get("token", ""), "logprob": entry.get("logprob")}]
    listed = [t["logprob"] for t in top if t.get("logprob") is not None]
    yes = [t["logprob"] for t in top if _is_word(t.get("token", ""), prompt.yes)]
    no = [t["logprob"] for t in top if _is_word(t.get("token", ""), prompt.no)]
    if not listed or (not yes and not no):
        return math.nan, i
    floor = min(listed)  # an absent side is at most as likely as the least likely listed token
    return _logsumexp(yes or [floor]) - _logsumexp(no or [floor]), i


def _is_word(token: str, words) -> bool:
    # The first token of an answer word: "Yes", " yes", "YES", or a leading piece
    # of a word the tokenizer splits; never a token longer than the word.
    t = token.strip().casefold()
    return bool(t) and any(w.casefold().startswith(t) and (len(t) == len(w) or len(t) >= 2) for w in words)


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


@BACKENDS.register("api")
class OpenAIChat(PairVerifier):
    """A chat model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Parameters
    ----------
    model : str
        ``<model name>@<base url>``, the base url ending before ``/chat/completions``.
    prompt : str
        Template name in ``facebench/prompts.yaml``.
    max_tokens : int
        Length of the answer asked for.
    top_logprobs : int
        Alternatives per token asked for (servers cap it; OpenAI at 20).
    concurrency : int
        Requests in flight at once.
    timeout : float
        Seconds per request.
    max_retries : int
        Retries on 408/409/429/5xx and connection errors, with exponential
        backoff (``Retry-After`` honoured); other errors fail the pair, which a
        rerun retries.
    api_key_env : str
        Environment variable holding the API key, if the server needs one.
    both_orders : bool
        Also ask with (B, A); its result goes into ``raw_output``.
    """

    requires = ()
    runtime = frozenset({"concurrency", "timeout", "max_retries", "api_key_env"})

    def __init__(self, *, model: str, prompt: str = DEFAULT_PROMPT, max_tokens: int = 8, top_logprobs: int = 20,
                 concurrency: int = 4, timeout: float = 120.0, max_retries: int = 5,
                 api_key_env: str = "OPENAI_API_KEY", both_orders: bool = False):
        self.model_name, self.base_url = split_spec(model)
        self.prompt: Prompt = load_prompt(prompt)
        self.max_tokens, self.top_logprobs = int(max_tokens), int(top_logprobs)
        self.concurrency, self.timeout, self.max_retries = max(1, int(concurrency)), float(timeout), int(max_retries)
        self.api_key_env, self.both_orders = api_key_env, bool(both_orders)

    @classmethod
    def identity(cls, settings: dict) -> dict:
        return {"prompt_template": load_prompt(settings.get("prompt", DEFAULT_PROMPT)).identity}

    @classmethod
    def unavailable(cls, settings: dict) -> str | None:
        try:
            split_spec(settings["model"])
        except ValueError as exc:
            return str(exc)
        return None

    def info(self) -> dict:
        return {"model_id": self.model_name, "revision": None, "device": f"server {self.base_url}",
                "prompt": self.prompt.question, "prompt_template": self.prompt.identity,
                "prompt_language": self.prompt.language,
                "image_handling": "dataset crops as PNG data URLs, as they are",
                "score_source": "log-probs where the server returns them, else the decision (see raw_output)",
                "both_orders": self.both_orders}

    def score_pairs(self, pairs: list[tuple[Image.Image, Image.Image]]) -> list[dict]:
        jobs = list(pairs) + ([(b, a) for a, b in pairs] if self.both_orders else [])
        with ThreadPoolExecutor(self.concurrency) as pool:
            results = list(pool.map(self._ask, jobs))
        rows = []
        for i, ab in enumerate(results[:len(pairs)]):
            raw = {k: ab[k] for k in ("answer", "score_from", "answer_token", "usage")}
            if self.both_orders:
                ba = results[len(pairs) + i]
                raw["ba"] = {k: ba.get(k) for k in ("score", "decision", "answer", "error")}
            row = {"score": ab["score"], "decision": ab["decision"], "raw_output": json.dumps(raw, ensure_ascii=False)}
            if ab.get("error"):
                row["error"] = ab["error"]
            rows.append(row)
        return rows

    def _ask(self, pair) -> dict:
        a, b = pair
        body = {"model": self.model_name, "temperature": 0, "max_tokens": self.max_tokens,
                "logprobs": True, "top_logprobs": self.top_logprobs,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_url(a)}},
                    {"type": "image_url", "image_url": {"url": data_url(b)}},
                    {"type": "text", "text": self.prompt.question}]}]}
        try:
            reply = self._post("/chat/completions", body)
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
        except (APIError, KeyError, IndexError, TypeError) as exc:
            return {"score": math.nan, "decision": None, "answer": None, "score_from": None,
                    "answer_token": None, "usage": None, "error": f"{type(exc).__name__}: {exc}"}
        answer = self.prompt.parse(text)
        content = (choice.get("logprobs") or {}).get("content")
        if self.prompt.kind == "number":
            score, source, at = answer.value, "number", None
        elif content:
            (score, at), source = logprob_score(content, self.prompt), "logprobs"
        else:
            score = float(answer.decision) if answer.decision in (0, 1) else math.nan
            source, at = "decision", None
        return {"score": score, "decision": answer.decision, "answer": text, "score_from": source,
                "answer_token": at, "usage": reply.get("usage")}

    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if exc.code not in RETRY_STATUS or attempt == self.max_retries:
                    raise APIError(f"{url} answered HTTP {exc.code}: {detail}") from None
                wait = _retry_after(exc.headers.get("Retry-After")) or _backoff(attempt)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.max_retries:
                    raise APIError(f"{url}: {getattr(exc, 'reason', exc)} after {attempt + 1} attempts") from None
                wait = _backoff(attempt)
            time.sleep(wait)
        raise AssertionError("unreachable")


def _backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2)


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, float(value)) if value else None
    except ValueError:
        return None
