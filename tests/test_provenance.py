from facebench.provenance import canonical_hash, redact


def test_redact_hides_secret_settings_but_keeps_token_counts():
    doc = {"api_key": "sk-1", "hf_token": "hf_x", "password": "p", "nested": [{"Authorization": "Bearer y"}],
           "max_new_tokens": 8, "top_logprobs": 20, "keyword": "k", "tokenizer": "t"}
    out = redact(doc)
    assert out["api_key"] == out["hf_token"] == out["password"] == "<redacted>"
    assert out["nested"][0]["Authorization"] == "<redacted>"
    assert (out["max_new_tokens"], out["top_logprobs"], out["keyword"], out["tokenizer"]) == (8, 20, "k", "t")
    assert doc["api_key"] == "sk-1"  # the caller's settings are untouched


def test_canonical_hash_ignores_key_order():
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})
