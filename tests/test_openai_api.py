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
    from facebench.backends.hf_vlm import tiny_folder
    from facebench.tiny_models import build

    # The session's tiny:qwen2-vl (the negative control's weights), built here if no test built it yet.
    folder = tiny_folder("qwen2-vl", 0)
    if not (folder / "config.json").is_file():
        build("qwen2-vl", folder, seed=0)
    port = free_port()
    logs = tmp_path_factory.mktemp("served")
    log = open(logs / "serve.log", "w")
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
                    raise RuntimeError(f"transformers serve did not start: {(logs / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.2)
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
        self.wfile.write(body if isinstance(body, bytes) else json.dumps(body).encode())  # bytes: sent as they are

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    # A short poll: shutdown() waits for the serving loop to look, 0.5 s by default, in every test.
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
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
    # markup, labels and quotes as separate tokens (Qwen2's BPE splits them so): read at the word
    ([[("**", -0.1), ("Yes", -3.0)], [("Yes", -0.2), ("No", -1.9)], [("**", -0.01)]], -0.2 - (-1.9)),
    ([[("Answer", -0.1)], [(":", -0.1)], [(" No", -0.3), (" Yes", -1.3)]], -1.3 - (-0.3)),
    ([[('"', -0.1), ("Yes", -2.0)], [("yes", -0.5), ("no", -1.0)], [('"', -0.1)]], -0.5 - (-1.0)),
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


def test_empty_top_logprobs_fall_back_to_the_decision_never_to_zero(scripted, demo_pairs):
    # A server that returns each chosen token's log-prob but no alternatives: the
    # log-odds would compare the chosen token with itself (exactly 0 for every pair).
    url, handler = scripted
    reply = vllm_reply("Yes.", [[("Yes", -0.2)], [(".", -0.01)]])
    for entry in reply["choices"][0]["logprobs"]["content"]:
        entry["top_logprobs"] = []
    handler.script = [(200, {}, reply)]
    row = resolve(f"api:m@{url}").load().score_pairs(demo_pairs[:1])[0]
    assert json.loads(row["raw_output"])["score_from"] == "decision"
    assert row["decision"] == 1 and row["score"] == 1.0


def test_reparse_reproduces_the_decisions_a_served_model_stored(scripted, tmp_path):
    from facebench.extraction import reparse, reparse_summary

    url, handler = scripted
    # answers in the order the pairs are asked (one request at a time), and how each rule reads them
    answers = [("**Yes**", 1, -1), ("Based on the faces, yes.", -1, 1), ("No.", 0, 0),
               ("Yes/No", -1, -1), ("Sorry, I can't help with identifying people.", -1, -1), ("Answer: No", 0, 0)]
    handler.script = [(200, {}, vllm_reply(text, [[("x", -0.1)]])) for text, _, _ in answers]
    run = evaluate(f"api:m@{url}", "demo", limit=6, out=tmp_path, settings={"concurrency": 1})
    assert run.manifest["extraction"] == "facebench@v2"
    stored = run.store.rows().sort_values("pair_id")["decision"].tolist()
    assert stored == [fb for _, fb, _ in answers]
    own = reparse(run)
    assert own["decision"].tolist() == stored and reparse_summary(own)["n_changed"] == 0
    assert reparse_summary(own)["n_refusals"] == 1 == run.metrics()["n_refusals"]
    assert reparse(run, "vlmevalkit-yorn")["decision"].tolist() == [y for _, _, y in answers]


# ------------------------------------------------------------------ hostile and broken servers


class _Elsewhere(BaseHTTPRequestHandler):
    """Another origin: records every request it gets and answers it as a model would."""

    seen: list = []

    def _answer(self):
        self.seen.append((self.command, dict(self.headers)))
        body = json.dumps(vllm_reply("No.", [[("No", -0.1)]])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args):
        pass


def test_the_key_never_reaches_the_results_nor_another_origin(scripted, demo_pairs, monkeypatch):
    url, handler = scripted
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), _Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    _Elsewhere.seen = []
    other = f"http://127.0.0.1:{elsewhere.server_address[1]}"
    try:
        handler.script = [
            (401, {}, {"error": "invalid key", "request_headers": {"Authorization": f"Bearer {SECRET}"}}),
            (200, {}, vllm_reply(f"Yes. Your key is {SECRET}, api_key=sk-another-key-998877", [[("Yes", -0.1)]])),
            (302, {"Location": f"{other}/v1/chat/completions"}, {}),
        ]
        rows = resolve(f"api:m@{url}", {"concurrency": 1}).load().score_pairs(demo_pairs[:3])
    finally:
        elsewhere.shutdown()
    stored = json.dumps(rows)
    assert SECRET not in stored and "sk-another-key" not in stored and "[redacted]" in stored
    assert "HTTP 401" in rows[0]["error"] and "Bearer [redacted]" in rows[0]["error"]
    assert rows[1]["decision"] == 1 and "error" not in rows[1]
    assert f"{url}/chat/completions answered HTTP 302, a redirect to {other}: not followed" in rows[2]["error"]
    assert math.isnan(rows[2]["score"])
    assert _Elsewhere.seen == [] and len(handler.seen) == 3


@pytest.mark.parametrize("status, body, problem", [
    (200, b"<html><body>502 Bad Gateway</body></html>", "not JSON after 1 attempts: <html><body>502 Bad Gateway"),
    (200, b"", "not JSON"),
    (200, {"choices": [{"message": None}]}, "unusable answer (AttributeError"),
    (200, {"choices": []}, "unusable answer (IndexError"),
    (200, [1, 2], "unusable answer (TypeError"),
    (503, b"x" * 100_000, "HTTP 503: xxxxx"),
])
def test_a_broken_reply_is_that_pairs_error_and_the_run_goes_on(scripted, demo_pairs, status, body, problem):
    url, handler = scripted
    handler.script = [(status, {}, body), (200, {}, vllm_reply("No.", [[("No", -0.1), ("Yes", -2.1)]]))]
    broken, fine = resolve(f"api:m@{url}", {"concurrency": 1, "max_retries": 0}).load().score_pairs(demo_pairs[:2])
    assert f"{url}/chat/completions" in broken["error"] and problem in broken["error"]
    assert math.isnan(broken["score"]) and len(broken["error"]) < 600
    assert fine["score"] == pytest.approx(-2.0) and "error" not in fine


def test_a_non_numeric_logprob_does_not_end_the_run(scripted, demo_pairs):
    url, handler = scripted
    handler.script = [(200, {}, vllm_reply("Yes", [[("Yes", "high"), ("No", "low")]])),
                      (200, {}, vllm_reply("No.", [[("No", -0.1), ("Yes", -2.1)]]))]
    odd, fine = resolve(f"api:m@{url}", {"concurrency": 1}).load().score_pairs(demo_pairs[:2])
    assert math.isnan(odd["score"]) and fine["score"] == pytest.approx(-2.0)


def test_huge_replies_are_refused_and_long_answers_cut(scripted, demo_pairs, monkeypatch):
    from facebench.backends import openai_api

    url, handler = scripted
    monkeypatch.setattr(openai_api, "MAX_RESPONSE_BYTES", 50_000)  # 8 MiB in use; the test needs no such reply
    handler.script = [(200, {}, vllm_reply("Yes " * 20_000, [[("Yes", -0.1)]])),
                      (200, {}, vllm_reply("Yes " * 1_000, [[("Yes", -0.1), ("No", -1.1)]]))]
    huge, long = resolve(f"api:m@{url}", {"concurrency": 1}).load().score_pairs(demo_pairs[:2])
    assert huge["error"].endswith(f"{url}/chat/completions answered more than 50000 bytes; the rest was not read")
    answer = json.loads(long["raw_output"])["answer"]
    assert answer == ("Yes " * 1000)[:openai_api.MAX_ANSWER_CHARS] + " … [cut: 4000 characters in all]"
    assert long["decision"] == 1 and long["score"] == pytest.approx(1.0)
