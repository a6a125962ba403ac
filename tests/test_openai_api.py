"""The OpenAI-compatible backend (``api:``), end to end against a real ``transformers
serve`` on 127.0.0.1 serving a tiny random-weight model, and its log-prob and retry
paths against responses in the format vLLM returns."""
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from facebench import evaluate
from facebench.backends.openai_api import logprob_score, split_spec
from facebench.datasets import load_dataset
from facebench.models import resolve
from facebench.prompts import load_prompt

SECRET = "sk-facebench-test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_pairs():
    ds = load_dataset("demo")
    return [(ds.images.load(a), ds.images.load(b)) for a, b in ds.pairs[["image_a", "image_b"]].to_numpy()[:4]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``transformers serve`` on 127.0.0.1 with a tiny Qwen2-VL from a local folder; yields (folder, base url)."""
    from facebench.tiny_models import build

    folder = build("qwen2-vl", tmp_path_factory.mktemp("served") / "tiny-qwen2-vl")
    port = free_port()
    log = open(folder.parent / "serve.log", "w")
    cli = Path(sys.executable).parent / "transformers"
    proc = subprocess.Popen([str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                             str(folder)], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"transformers serve did not start: {(folder.parent / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield folder, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_answers_match_the_local_backend_on_the_same_model(server, demo_pairs):
    folder, url = server
    remote = resolve(f"api:{folder}@{url}").load().score_pairs(demo_pairs)
    local = resolve(f"hf:{folder}").load()
    expected = local.score_pairs(demo_pairs)
    # Greedy answers from the same float32 weights: the server saw the same two
    # images, in the same order, after the same prompt.
    assert [json.loads(r["raw_output"])["answer"] for r in remote] == \
           [json.loads(r["raw_output"])["answer"] for r in expected]
    assert [r["decision"] for r in remote] == [r["decision"] for r in expected]
    processor = local._loaded[0]
    prompt_tokens = len(processor(text=[local.rendered_prompt], images=[list(demo_pairs[0])])["input_ids"][0])
    assert json.loads(remote[0]["raw_output"])["usage"]["prompt_tokens"] == prompt_tokens
    # transformers serve returns no logprobs: the score is the decision, and says so.
    for r in remote:
        raw = json.loads(r["raw_output"])
        assert raw["score_from"] == "decision"
        assert (math.isnan(r["score"]) and r["decision"] == -1) or r["score"] == r["decision"]


def test_evaluate_through_the_server_never_records_the_key(server, tmp_path, monkeypatch, capfd):
    folder, url = server
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    run = evaluate(f"api:{folder}@{url}", "demo", limit=6, batch_size=3, out=tmp_path)
    assert len(run.store.rows()) == 6 and run.store.rows()["error"].isna().all()
    assert run.manifest["prompt_template"] == "paper-yesno@v1"
    out, err = capfd.readouterr()
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET.encode() not in stored and SECRET not in out + err


def test_unreachable_server_fails_the_pairs_not_the_run(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    v = resolve(f"api:m@{url}", {"max_retries": 1}).load()
    ds = load_dataset("demo")
    rows = v.score_pairs([(ds.images.load(ds.pairs.image_a[0]), ds.images.load(ds.pairs.image_b[0]))])
    assert "127.0.0.1" in rows[0]["error"] and math.isnan(rows[0]["score"])


class _Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, headers, body) of ``script``."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.seen.append((json.loads(self.rfile.read(int(self.headers["Content-Length"]))), dict(self.headers)))
        status, headers, body = self.script.pop(0)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Scripted.script, _Scripted.seen = [], []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", _Scripted
    httpd.shutdown()


def vllm_reply(text: str, top: list[list[tuple[str, float]]]) -> dict:
    """A chat completion in the format vLLM's OpenAI server returns with logprobs=True."""
    content = [{"token": t[0][0], "logprob": t[0][1], "bytes": list(t[0][0].encode()),
                "top_logprobs": [{"token": tok, "logprob": lp, "bytes": list(tok.encode())} for tok, lp in t]}
               for t in top]
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": len(top), "total_tokens": 100 + len(top)}}


def test_logprob_path_gives_the_log_odds_and_retries_on_429(scripted, demo_pairs, monkeypatch):
    url, handler = scripted
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    handler.script = [
        (429, {"Retry-After": "0"}, {"error": "rate limited"}),
        (200, {}, vllm_reply("Yes.", [[("Yes", -0.2), ("No", -1.9), (" yes", -3.0)], [(".", -0.01)]])),
    ]
    row = resolve(f"api:m@{url}").load().score_pairs(demo_pairs[:1])[0]
    expected = math.log(math.exp(-0.2) + math.exp(-3.0)) - (-1.9)
    assert row["score"] == pytest.approx(expected) and row["decision"] == 1
    assert json.loads(row["raw_output"])["score_from"] == "logprobs"
    body, headers = handler.seen[-1]
    assert len(handler.seen) == 2 and body["temperature"] == 0 and body["logprobs"] is True
    images = [c for c in body["messages"][0]["content"] if c["type"] == "image_url"]
    assert len(images) == 2 and all(c["image_url"]["url"].startswith("data:image/png;base64,") for c in images)
    assert headers["Authorization"] == f"Bearer {SECRET}"


def test_client_errors_are_not_retried(scripted, demo_pairs):
    url, handler = scripted
    handler.script = [(400, {}, {"error": "bad request: too many images"})]
    row = resolve(f"api:m@{url}").load().score_pairs(demo_pairs[:1])[0]
    assert "HTTP 400" in row["error"] and "too many images" in row["error"] and len(handler.seen) == 1


@pytest.mark.parametrize("top, expected", [
    ([[("<think>", -0.1)], [("hmm", -0.1)], [("</think>", -0.1)], [("\n", -0.1)], [("No", -0.5), ("Yes", -1.5)]],
     -1.0),                                       # read after the think block and the blank
    ([[("Yes", -0.05), ("Sure", -3.0)]], -0.05 - (-3.0)),  # "no" absent: bounded by the least likely listed
    ([[("I", -0.1), ("The", -2.0)]], math.nan),   # no answer word at the answer position
])
def test_logprob_score_reads_the_answer_position(top, expected):
    content = vllm_reply("", top)["choices"][0]["logprobs"]["content"]
    score, _ = logprob_score(content, load_prompt("paper-yesno"))
    assert (math.isnan(expected) and math.isnan(score)) or score == pytest.approx(expected)


def test_spec_needs_a_name_and_a_url():
    assert split_spec("a/b@https://api.example.org/v1/") == ("a/b", "https://api.example.org/v1")
    ok, why = resolve("api:just-a-name").availability()
    assert not ok and "<model name>@<base url>" in why


def test_decision_only_scores_are_flagged_in_the_metrics(server, tmp_path):
    folder, url = server
    m = evaluate(f"api:{folder}@{url}", "demo", limit=3, out=tmp_path).metrics()
    assert any("no log-probs" in f for f in m["flags"])
