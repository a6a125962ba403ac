"""The transformers MLLM backend (``hf:``), on tiny random-weight models of real
architectures built in the test session and loaded through the path users take."""
import json
import math

import numpy as np
import pytest
# Pinned in requirements.txt: a broken install fails here, loudly, instead of skipping these tests.
import torch
from PIL import Image

from facebench import evaluate, get_scorer
from facebench.backends.hf_vlm import HFVisionLanguage, ModelLoadError, answer_token_ids, tiny_folder
from facebench.datasets import load_dataset
from facebench.extraction import reparse
from facebench.models import resolve
from facebench.scoring import run_store
from facebench.tiny_models import FAMILIES, build

FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def demo_pairs():
    ds = load_dataset("demo")
    keys = ds.pairs[["image_a", "image_b"]].to_numpy()[:8]
    return [(ds.images.load(a), ds.images.load(b)) for a, b in keys]


@pytest.fixture(scope="module")
def tiny():
    """family → a loaded verifier of that tiny family, loaded once per module."""
    cache = {}

    def get(family: str) -> HFVisionLanguage:
        if family not in cache:
            cache[family] = resolve(f"hf:tiny:{family}").load()
        return cache[family]

    return get


@pytest.fixture(scope="module")
def verifier(tiny):
    """One tiny Qwen2-VL shared by the tests that don't depend on the family."""
    return tiny("qwen2-vl")


def image_token_id(config) -> int:
    return getattr(config, "image_token_id", None) or config.image_token_index


def captured_inputs(v: HFVisionLanguage, pairs) -> dict:
    """The tensors ``generate`` receives when scoring ``pairs``."""
    model = v._loaded[1]
    seen, generate = [], model.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return generate(**kwargs)

    model.generate = spy
    try:
        v.score_pairs(pairs)
    finally:
        del model.generate
    return seen[0]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_exactly_two_images_reach_the_model_in_order(family, demo_pairs, tiny):
    v = tiny(family)
    processor, model = v._loaded
    a, b = demo_pairs[0]
    seen = captured_inputs(v, [(a, b)])
    token = image_token_id(model.config)
    kw = {"return_tensors": "pt", "add_special_tokens": v._add_special_tokens}
    one = processor(text=[v.rendered_prompt], images=[[a, b]], **kw)
    swapped = processor(text=[v.rendered_prompt], images=[[b, a]], **kw)
    assert torch.equal(seen["input_ids"], one["input_ids"])
    placeholder = _placeholder(family)
    assert v.rendered_prompt.count(placeholder) == 2
    if family != "llava-onevision":  # it tiles a lone image ("anyres") but not one of several
        single = processor(text=[v.rendered_prompt.replace(placeholder, "", 1)], images=[[a]], **kw)
        assert int((seen["input_ids"] == token).sum()) == 2 * int((single["input_ids"] == token).sum())
    assert torch.allclose(seen["pixel_values"].float(), one["pixel_values"].float())
    assert not torch.allclose(seen["pixel_values"].float(), swapped["pixel_values"].float())


def _placeholder(family: str) -> str:
    """What the family's chat template writes for one image."""
    from facebench.tiny_models import get_family

    return get_family(family).image_placeholder


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_scores_do_not_depend_on_batch_size(family, demo_pairs, tiny):
    # Crops of several sizes, so that families with dynamic resolution (Qwen)
    # get prompts of different lengths and the batch is really left-padded.
    pairs = [(a.resize((112 + 28 * (i % 3), 112)), b) for i, (a, b) in enumerate(demo_pairs[:4])]
    v = tiny(family)
    batched = v.score_pairs(pairs)
    single = [v.score_pairs([p])[0] for p in pairs]
    assert [r["decision"] for r in batched] == [r["decision"] for r in single]
    np.testing.assert_allclose([r["score"] for r in batched], [r["score"] for r in single], atol=1e-4)
    assert all(math.isfinite(r["score"]) for r in batched)
    if family.startswith("qwen"):
        mask = captured_inputs(v, pairs)["attention_mask"]
        assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()  # padded on the left


def test_answer_tokens_are_the_yes_and_no_variants(verifier):
    tokenizer = verifier._loaded[0].tokenizer
    yes, no = verifier.answer_ids
    words = lambda ids: {tokenizer.decode([i]).strip().lower() for i in ids}  # noqa: E731
    assert words(yes) == {"yes"} and words(no) == {"no"}
    assert len(yes) >= 2 and len(no) >= 2  # with and without a leading space, several cases
    assert answer_token_ids(tokenizer, ["oui"]) and not set(answer_token_ids(tokenizer, ["oui"])) & set(yes)


def test_score_is_log_odds_of_yes_over_no_at_the_answer_position(verifier, demo_pairs):
    processor, model = verifier._loaded
    row = verifier.score_pairs(demo_pairs[:1])[0]
    assert json.loads(row["raw_output"])["answer_step"] == 0
    inputs = processor(text=[verifier.rendered_prompt], images=[list(demo_pairs[0])], return_tensors="pt")
    with torch.inference_mode():
        logp = model(**inputs).logits[0, -1].log_softmax(-1)
    yes, no = verifier.answer_ids
    expected = float(logp[yes].logsumexp(0) - logp[no].logsumexp(0))
    assert row["score"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("pieces, answer", [
    (["**", "Yes", "**"], 1),
    (["Answer", ":", " Yes"], 2),
    (['"', "Yes", '"'], 1),
    (["「", "Yes", "」"], 1),  # 「 is three byte-level tokens, two of them decoding to "\ufffd"
    (["<think>", "\n", "No", "</think>", "\n", "**", " No", "**"], 6),
])
def test_score_is_read_at_the_token_where_the_answer_starts(verifier, pieces, answer):
    # Generated ids made of the tokenizer's own pieces, and logits whose log-odds differ at every
    # step: the score tells which step was read.
    tokenizer = verifier._loaded[0].tokenizer
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in pieces]
    ids = [i for e in encoded for i in e]
    step = sum(len(e) for e in encoded[:answer])
    yes, no = verifier.answer_ids
    logits = torch.full((len(ids), len(tokenizer)), -30.0)
    for k in range(len(ids)):
        logits[k, yes], logits[k, no] = float(k), 0.0  # log-odds k + log(#yes / #no)
    row = verifier._read(ids, logits)
    assert row["answer_step"] == step
    assert row["score"] == pytest.approx(step + math.log(len(yes) / len(no)))
    assert row["decision"] == (0 if pieces[answer].strip() == "No" else 1)


def test_decision_comes_from_the_parsed_answer_text(verifier, demo_pairs, monkeypatch):
    rows = verifier.score_pairs(demo_pairs[:3])
    for r in rows:
        answer = json.loads(r["raw_output"])["answer"]
        assert r["decision"] == verifier.prompt.parse(answer).decision


def test_out_of_memory_halves_the_batch_and_loses_no_pair(verifier, demo_pairs, monkeypatch):
    real = HFVisionLanguage._score_batch
    sizes = []

    def flaky(self, pairs):
        sizes.append(len(pairs))
        if len(pairs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, pairs)

    monkeypatch.setattr(HFVisionLanguage, "_score_batch", flaky)
    v = resolve("hf:tiny:qwen2-vl").load()
    with pytest.warns(UserWarning, match="batch size halved to 4"):
        rows = v.score_pairs(demo_pairs)
    assert len(rows) == 8 and sizes[:3] == [8, 4, 2] and v.batch_limit == 2
    monkeypatch.setattr(HFVisionLanguage, "_score_batch", real)
    np.testing.assert_allclose([r["score"] for r in rows], [r["score"] for r in v.score_pairs(demo_pairs)], atol=1e-4)


def test_both_orders_records_the_swapped_pair(demo_pairs):
    v = resolve("hf:tiny:qwen2-vl", {"both_orders": True}).load()
    a, b = demo_pairs[1]
    row = v.score_pairs([(a, b)])[0]
    plain = resolve("hf:tiny:qwen2-vl").load()
    ab, ba = plain.score_pairs([(a, b), (b, a)])
    assert row["score"] == pytest.approx(ab["score"], abs=1e-5)
    assert json.loads(row["raw_output"])["ba"]["score"] == pytest.approx(ba["score"], abs=1e-5)
    assert ab["score"] != pytest.approx(ba["score"], abs=1e-6)  # the order reaches the model


def test_image_size_resizes_each_face_bicubic_before_the_processor(demo_pairs):
    # The tiny Qwen2-VL makes one token of each 28×28 pixels, as the real one does:
    # 16 for a 112×112 demo crop as given, 4 for the same crop at 56×56.
    small = resolve("hf:tiny:qwen2-vl", {"image_size": 56}).load()
    a, b = demo_pairs[0]
    assert a.size == b.size == (112, 112)
    processor, model = small._loaded
    token = image_token_id(model.config)

    def processed(size=None, resample=None):
        faces = [[face.convert("RGB").resize((size, size), resample) if size else face.convert("RGB")
                  for face in (a, b)]]
        return processor(text=[small.rendered_prompt], images=faces, return_tensors="pt")

    given, resized = processed(), captured_inputs(small, [(a, b)])
    assert int((given["input_ids"] == token).sum()) == 2 * 16
    assert int((resized["input_ids"] == token).sum()) == 2 * 4
    assert resized["pixel_values"].shape[0] == given["pixel_values"].shape[0] // 4
    assert torch.allclose(resized["pixel_values"].float(), processed(56, Image.Resampling.BICUBIC)["pixel_values"])
    assert not torch.allclose(resized["pixel_values"].float(), processed(56, Image.Resampling.BILINEAR)["pixel_values"])


def test_image_size_is_part_of_the_run_and_its_manifest(tmp_path):
    plain = resolve("hf:tiny:qwen2-vl")
    assert resolve("hf:tiny:qwen2-vl", {"image_size": None}).identity() == plain.identity()  # null: as given
    run = evaluate("hf:tiny:qwen2-vl", "demo", limit=1, out=tmp_path, settings={"image_size": 56}, progress=False)
    assert run.store.dir != run_store("hf:tiny:qwen2-vl", "demo", out=tmp_path).dir
    m = run.manifest
    assert m["settings"]["image_size"] == 56 and m["image_handling"] == "resized to 56x56 (bicubic)"


@pytest.mark.parametrize("value", [0, -112, 224.0, "224", True])
def test_an_image_size_that_is_not_a_whole_number_of_pixels_is_refused(value, tmp_path):
    with pytest.raises(ValueError, match=r"model setting image_size="):
        HFVisionLanguage(model="tiny:qwen2-vl", image_size=value)
    with pytest.raises(ValueError, match=r"model setting image_size="):  # before any model loads or pair is scored
        evaluate("hf:tiny:qwen2-vl", "demo", limit=2, out=tmp_path, settings={"image_size": value})
    assert not any(tmp_path.iterdir())


def test_number_template_scores_with_the_parsed_number(demo_pairs):
    v = resolve("hf:tiny:qwen2-vl", {"prompt": "score-0-100"}).load()
    for r in v.score_pairs(demo_pairs[:2]):
        answer = v.prompt.parse(json.loads(r["raw_output"])["answer"])
        assert r["decision"] == answer.decision
        assert (math.isnan(r["score"]) and math.isnan(answer.value)) or r["score"] == answer.value
    assert "0 (certainly different people)" in v.rendered_prompt


def test_evaluate_records_prompt_and_resumes(tmp_path):
    run = evaluate("hf:tiny:qwen2-vl", "demo", limit=6, batch_size=4, out=tmp_path)
    m = run.manifest
    assert m["prompt_template"] == "paper-yesno@v1" and "Answer with yes or no." in m["prompt"]
    assert m["settings"]["prompt"] == "paper-yesno" and m["architecture"] == "Qwen2VLForConditionalGeneration"
    assert m["extraction"] == "facebench@v2"
    reread = reparse(run)  # the stored answers under the run's own rule: the stored decisions, no model
    assert reread["decision"].tolist() == run.store.rows()["decision"].tolist() == reread["stored"].tolist()
    first = run.store.rows().set_index("pair_id")
    full = evaluate("hf:tiny:qwen2-vl", "demo", batch_size=8, out=tmp_path)
    assert full.store.dir == run.store.dir
    rows = full.store.rows().set_index("pair_id")
    assert len(rows) == 54
    assert rows.loc[first.index, "score"].tolist() == first["score"].tolist()  # finished pairs were kept
    other = evaluate("hf:tiny:qwen2-vl", "demo", limit=2, out=tmp_path, settings={"prompt": "fr-ouinon"})
    assert other.store.dir != run.store.dir and "oui" in other.manifest["prompt"]


def test_negative_control_is_near_chance(tmp_path):
    m = evaluate("negative-control", "demo", out=tmp_path).metrics()
    # Random weights cannot tell people apart; with 54 pairs chance is wide, but a
    # protocol leak (labels or identities reaching the model) would show as ~1.
    assert m["auc"] < 0.85 and m["n_pairs"] == 54


def test_unknown_setting_is_refused_with_the_accepted_names():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['promt'\].*'prompt'"):
        resolve("hf:tiny:qwen2-vl", {"promt": "x"})


def test_model_that_is_neither_local_nor_cached_says_how_to_get_it(tmp_path):
    spec = resolve("hf:nobody/no-such-model")
    ok, why = spec.availability()
    assert not ok and "hf download nobody/no-such-model" in why and "HF_HUB_OFFLINE" in why
    with pytest.raises(ModelLoadError, match="hf download"):
        spec.load()._loaded
    ok, why = resolve(f"hf:{tmp_path}").availability()
    assert not ok and "config.json" in why


def test_tiny_models_are_built_once_and_reused():
    folder = tiny_folder("qwen2-vl")
    resolve("hf:tiny:qwen2-vl").load().source
    before = (folder / "config.json").stat().st_mtime_ns
    resolve("hf:tiny:qwen2-vl").load().source
    assert (folder / "config.json").stat().st_mtime_ns == before


def test_get_scorer_gives_one_score_per_pair(demo_pairs):
    scores = get_scorer("hf:tiny:qwen2-vl")(demo_pairs[:3])
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_build_is_the_same_path_as_a_saved_folder(tmp_path, demo_pairs):
    folder = build("llava", tmp_path / "llava")
    rows = resolve(f"hf:{folder}").load().score_pairs(demo_pairs[:2])
    assert len(rows) == 2 and all(math.isfinite(r["score"]) for r in rows)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_prompt_is_tokenized_as_apply_chat_template_does(family, demo_pairs, tiny):
    # Rendering once and tokenizing per batch must not add a second BOS (Gemma 3, Idefics3).
    v = tiny(family)
    a, b = demo_pairs[0]
    processor = v._loaded[0]
    messages = [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "image", "image": b},
                                              {"type": "text", "text": v.prompt.question}]}]
    reference = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True, return_tensors="pt")
    assert torch.equal(captured_inputs(v, [(a, b)])["input_ids"], reference["input_ids"])
