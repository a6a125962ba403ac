"""MLLMs behind an OpenAI-compatible chat-completions server (vLLM, SGLang,
``transformers serve``, hosted APIs): ``--model api:<model name>@<base url>``.

Each pair is one request: both images as base64 PNG data URLs in one user
message, then the prompt template's question; temperature 0. The answer text
is parsed as the local backend parses it. When the server returns
``logprobs`` (vLLM, SGLang, OpenAI), the score is the same log-odds as the
local backend's — log P(yes) − log P(no) over the answer-word variants found
among ``top_logprobs`` at the answer's first token; a side absent from the top
list counts as the smallest listed log-prob, an upper bound. When it does not
(``transformers serve``), or lists no alternatives (empty ``top_logprobs``,
where a log-odds would be 0 by construction), the score is the decision itself
(1 / 0, NaN when invalid) and each pair's ``raw_output`` says ``"score_from":
"decision"``, so the report can say that ROC and k-fold accuracy rest on hard
decisions.

The API key is read from the environment variable named by ``api_key_env``
(``OPENAI_API_KEY`` by default) at request time; it is never stored in the
settings, the manifest, the results or an error message: what the server
sends back is stored with the key and anything key-shaped redacted
(:func:`redact`), and redirects are never followed, so the key only ever goes
to the URL given (a redirect is that pair's error).

A reply that is not JSON (retried), is larger than :data:`MAX_RESPONSE_BYTES`,
or lacks the fields of a chat completion is that pair's error, naming the URL,
and the other pairs go on; answers are stored cut to :data:`MAX_ANSWER_CHARS`.
"""
from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from facebench.models import BACKENDS, PairVerifier
from facebench.prompts import DEFAULT_PROMPT, Prompt, answer_start, load_reading, reading_identity

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_RESPONSE_BYTES = 8 << 20  # a reply larger than this is that pair's error, never read whole
MAX_ANSWER_CHARS = 2000  # an answer (or error) is stored cut to this many characters, with its full length


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
    The answer's first token is found as the local backend finds it
    (:func:`facebench.prompts.answer_start`: after think blocks, markup, quotes
    and labels); NaN when that token lists no alternatives.

    Returns the score and the index of the token it was read at.

    >>> content = [{"token": "Yes", "logprob": -0.1, "top_logprobs": [
    ...     {"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": -2.4},
    ...     {"token": "yes", "logprob": -4.0}]}]
    >>> from facebench.prompts import load_prompt
    >>> round(logprob_score(content, load_prompt("paper-yesno"))[0], 4)
    2.32
    """
    prefixes = list(itertools.accumulate(entry.get("token", "") for entry in content))
    i = answer_start(prefixes)
    if i is None:
        return math.nan, None
    entry = content[i]
    top = entry.get("top_logprobs") or []  # the chosen token alone would be both sides: a log-odds of 0
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
    extraction : str, optional
        The rule of ``facebench/extraction.yaml`` that reads answers into
        decisions; None: the template's own.
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

    def __init__(self, *, model: str, prompt: str = DEFAULT_PROMPT, extraction: str | None = None,
                 max_tokens: int = 8, top_logprobs: int = 20, concurrency: int = 4, timeout: float = 120.0,
                 max_retries: int = 5, api_key_env: str = "OPENAI_API_KEY", both_orders: bool = False):
        self.model_name, self.base_url = split_spec(model)
        self.prompt, self.rule = load_reading(prompt, extraction)
        self.max_tokens, self.top_logprobs = int(max_tokens), int(top_logprobs)
        self.concurrency, self.timeout, self.max_retries = max(1, int(concurrency)), float(timeout), int(max_retries)
        self.api_key_env, self.both_orders = api_key_env, bool(both_orders)

    @classmethod
    def identity(cls, settings: dict) -> dict:
        return reading_identity(settings)

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
                "extraction": self.rule.identity,
                "prompt_language": self.prompt.language,
                "image_handling": "dataset crops as PNG data URLs, as they are",
                "score_source": "log-probs where the server returns them, else the decision (see raw_output)",
                "both_orders": self.both_orders}

    def score_pairs(self, pairs: list[tuple[Image.Image, Image.Image]]) -> list[dict]:
        jobs = list(pairs) + ([(b, a) for a, b in pairs] if self.both_orders else [])
        with ThreadPoolExecutor(self.concurrency) as pool:
            results = list(pool.map(self._answer, jobs))
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

    def _answer(self, pair) -> dict:
        """:meth:`_ask`, made safe to store: an answer it cannot use is that pair's error (naming the
        URL) and the run goes on; what the server sent is redacted (:func:`redact`) and capped at
        :data:`MAX_ANSWER_CHARS`; ``usage`` keeps its numbers only."""
        url = f"{self.base_url}/chat/completions"
        try:
            result = self._ask(pair)
        except (ValueError, LookupError, TypeError, AttributeError) as exc:  # a malformed answer
            result = {"score": math.nan, "decision": None, "answer": None, "score_from": None,
                      "answer_token": None, "usage": None, "error": f"{type(exc).__name__}: {exc}"}
        if result.get("error") and url not in result["error"]:
            result["error"] = f"{url}: unusable answer ({result['error']})"
        secret = os.environ.get(self.api_key_env)
        for key in ("answer", "error"):
            if result.get(key) is not None:
                result[key] = _cap(redact(str(result[key]), secret))
        usage = result.get("usage")
        result["usage"] = {k: v for k, v in usage.items() if isinstance(v, (int, float))} \
            if isinstance(usage, dict) else None
        return result

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
        answer = self.rule.parse(self.prompt, text)
        content = (choice.get("logprobs") or {}).get("content")
        if self.prompt.kind == "number":
            score, source, at = answer.value, "number", None
        elif any(isinstance(entry, dict) and entry.get("top_logprobs") for entry in content or ()):
            (score, at), source = logprob_score(content, self.prompt), "logprobs"
        else:  # no log-probs, or no alternatives to the chosen tokens (top_logprobs empty)
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
            last = attempt == self.max_retries
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    answer = response.read(MAX_RESPONSE_BYTES + 1)
                if len(answer) > MAX_RESPONSE_BYTES:
                    raise APIError(f"{url} answered more than {MAX_RESPONSE_BYTES} bytes; the rest was not read")
                try:
                    return json.loads(answer)
                except ValueError:  # e.g. a proxy's HTML error page: may pass, so retried
                    if last:
                        raise APIError(f"{url} answered with something that is not JSON after {attempt + 1} "
                                       f"attempts: {_snippet(answer, key)}") from None
                    wait = _backoff(attempt)
            except urllib.error.HTTPError as exc:
                if 300 <= exc.code < 400:
                    to = _origin(exc.headers.get("Location"))
                    raise APIError(f"{url} answered HTTP {exc.code}, a redirect to {to}: not followed, so the key "
                                   f"never leaves {_origin(url)}; give the final URL in the model spec") from None
                if exc.code not in RETRY_STATUS or last:
                    raise APIError(f"{url} answered HTTP {exc.code}: {_snippet(exc.read(300), key)}") from None
                wait = _retry_after(exc.headers.get("Retry-After")) or _backoff(attempt)
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
                if last:
                    raise APIError(f"{url}: {getattr(exc, 'reason', None) or type(exc).__name__} after "
                                   f"{attempt + 1} attempts") from None
                wait = _backoff(attempt)
            time.sleep(wait)
        raise AssertionError("unreachable")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the 3xx as an HTTPError: a redirect is never followed


_OPENER = urllib.request.build_opener(_NoRedirects())
# Key-shaped text: a bearer token, an OpenAI-style key, or the value after a key-like name.
_KEYISH = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{8,}|"
                     r"((?:api[_-]?key|x-api-key|authorization|access[_-]?token|secret)"
                     r"[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)[^\s\"',;}]+")


def redact(text: str, secret: str | None = None) -> str:
    """``text`` with ``secret`` and anything key-shaped replaced by ``[redacted]``.

    >>> redact('echo: {"Authorization": "Bearer sk-abc123456789"} api_key=zzz ok', "zzz")
    'echo: {"Authorization": "Bearer [redacted]"} api_key=[redacted] ok'
    """
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEYISH.sub(lambda m: (m[1] or m[2] or "") + "[redacted]", text)


def _cap(text: str) -> str:
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    return text[:MAX_ANSWER_CHARS] + f" … [cut: {len(text)} characters in all]"


def _snippet(body: bytes, secret: str | None) -> str:
    return redact(" ".join(body[:300].decode("utf-8", "replace").split()), secret)


def _origin(url: str | None) -> str:
    parts = urllib.parse.urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else repr(url)


def _backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2)


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, float(value)) if value else None
    except ValueError:
        return None
