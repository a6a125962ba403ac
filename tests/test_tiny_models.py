"""Tiny random-weight VLMs (facebench/tiny_models.py): every family builds, loads
through the Auto classes as a hub checkpoint does, sees two images' worth of image
tokens, batches with left padding like one-at-a-time, and is deterministic."""
from __future__ import annotations

import numpy as np
import pytest
# Pinned in requirements.txt: a broken install fails here, loudly, instead of skipping these tests.
import torch
import transformers
from safetensors.torch import load_file

from facebench.tiny_models import FAMILIES, build, get_family, special_tokens

NAMES = sorted(FAMILIES)
QUESTION = "Are these two images of the same person? Answer yes or no."
# Prompts of different lengths, so the batch really is left-padded.
QUESTIONS = [QUESTION, "Same person? yes or no.", "Are the two face images of the same person? Answer with yes or no."]
ANSWER_WORDS = ["Yes", "yes", "YES", "No", "no", "NO", "oui", "non", "ja", "nein", "是", "否"]
# Expected float32 disagreement between a left-padded batch and single prompts is
# rounding only (about 3e-7 here); a masking or position bug is orders larger.
BATCH_ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The matrices are tiny: starting threads costs more than they save, and on the
    # shared 2-core test machine this module ran 3x faster on one thread (17 s vs 54 s).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """family -> folder; each family is built once per test module."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(name, root / name, seed=0)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def loaded(built):
    """(processor, model) loaded from the built folder the way users load hub models."""
    cache: dict[tuple, tuple] = {}

    def get(name: str, attn: str = "sdpa"):
        if (name, attn) not in cache:
            folder = built(name)
            processor = transformers.AutoProcessor.from_pretrained(folder)
            processor.tokenizer.padding_side = "left"
            model = transformers.AutoModelForImageTextToText.from_pretrained(folder, attn_implementation=attn)
            cache[name, attn] = (processor, model.eval())
        return cache[name, attn]

    return get


def faces(n: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(n)]


def chat(question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": question}]}]


def image_token_id(config) -> int:
    return getattr(config, "image_token_id", None) or config.image_token_index


def tokens_per_image(config, inputs) -> list[int]:
    """Image tokens each image should get, from the *model* config's sizes (not the processor's)."""
    kind, vision = type(config).__name__, config.vision_config
    n_images = 2
    if kind.startswith("Qwen"):
        merge = vision.spatial_merge_size
        return [int(thw.prod()) // merge**2 for thw in inputs["image_grid_thw"]]
    side = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
    patches = (side // patch) ** 2
    if kind == "LlavaConfig":  # the CLS feature is dropped ("default" strategy)
        return [patches] * n_images
    if kind == "LlavaOnevisionConfig":  # multi-image prompts: base tile + one newline feature each
        return [patches + 1] * n_images
    if kind == "Idefics3Config":  # pixel shuffle
        return [patches // config.scale_factor**2] * n_images
    if kind == "Gemma3Config":  # average-pooled to a fixed count
        return [config.mm_tokens_per_image] * n_images
    if kind == "InternVLConfig":  # tiles per image × pixel-shuffled patches per tile
        tiles = inputs["pixel_values"].shape[0] // n_images
        return [tiles * int(patches * config.downsample_ratio**2)] * n_images
    raise AssertionError(f"no expected image-token count for {kind}")


def test_families_cover_the_requested_architectures():
    assert {"qwen2-vl", "qwen2.5-vl", "qwen3-vl", "llava", "llava-onevision", "idefics3", "smolvlm",
            "gemma3", "internvl"} <= set(FAMILIES)


def test_unknown_family_is_a_value_error_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'gemma3'"):
        build("gemma-3", tmp_path)
    with pytest.raises(ValueError, match="seed"):
        build("llava", tmp_path, seed=-1)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", NAMES)
def test_build_saves_a_small_hub_style_folder(name, built, loaded):
    folder = built(name)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "processor_config.json", "chat_template.jinja"} <= files
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5 * 2**20

    family = get_family(name)
    processor, model = loaded(name)
    config, tokenizer = model.config, processor.tokenizer
    assert type(config).__name__ == family.config_class
    assert type(processor).__name__ == family.spec["processor"]["class"]
    assert type(processor.image_processor).__name__ == family.spec["image_processor"]["class"]
    assert model.dtype == torch.float32
    assert config.get_text_config().vocab_size == len(tokenizer) == model.get_input_embeddings().num_embeddings
    assert tokenizer.pad_token_id is not None and model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.convert_ids_to_tokens(image_token_id(config)) == family.image_token
    # the special tokens are single tokens, not spelled out in bytes
    for token in special_tokens(family):
        assert tokenizer.tokenize(token) == [token]


@pytest.mark.parametrize("name", NAMES)
def test_answer_words_are_single_tokens(name, loaded):
    tokenizer = loaded(name)[0].tokenizer
    for word in ANSWER_WORDS:
        for text in (word, " " + word):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert len(ids) == 1 and tokenizer.decode(ids) == text, (text, tokenizer.convert_ids_to_tokens(ids))


@pytest.mark.parametrize("name", NAMES)
def test_chat_template_places_two_images_and_the_question(name, loaded):
    processor = loaded(name)[0]
    placeholder = get_family(name).image_placeholder
    prompt = processor.apply_chat_template(chat(), add_generation_prompt=True, tokenize=False)
    without = processor.apply_chat_template(chat(), add_generation_prompt=False, tokenize=False)
    assert prompt.count(placeholder) == 2 and QUESTION in prompt
    assert prompt.startswith(without) and len(prompt) > len(without)


@pytest.mark.parametrize("name", NAMES)
def test_two_image_prompt_gets_two_images_of_tokens_and_runs(name, loaded):
    processor, model = loaded(name)
    prompt = processor.apply_chat_template(chat(), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[faces(2)], return_tensors="pt")
    count = int((inputs["input_ids"] == image_token_id(model.config)).sum())
    per_image = tokens_per_image(model.config, inputs)
    assert len(per_image) == 2 and count == sum(per_image) > 0
    with torch.no_grad():
        logits = model(**inputs).logits
        other = model(**processor(text=[prompt], images=[faces(2, seed=5)], return_tensors="pt")).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits[:, -1]).all()
    assert not torch.allclose(logits[:, -1], other[:, -1]), "the answer does not depend on the images"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", NAMES)
def test_left_padded_batch_matches_one_at_a_time(name, attn, loaded):
    processor, model = loaded(name, attn)
    prompts = [processor.apply_chat_template(chat(q), add_generation_prompt=True, tokenize=False) for q in QUESTIONS]
    images = faces(2 * len(prompts), seed=1)
    pairs = [images[2 * i:2 * i + 2] for i in range(len(prompts))]
    batch = processor(text=prompts, images=pairs, padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any(), "expected left padding"
    with torch.no_grad():
        batched = model(**batch).logits[:, -1]
        single = torch.cat([model(**processor(text=[p], images=[pair], return_tensors="pt")).logits[:, -1]
                            for p, pair in zip(prompts, pairs)])
    assert (batched - single).abs().max().item() < BATCH_ATOL


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_on_a_left_padded_batch(name, loaded):
    processor, model = loaded(name)
    prompts = [processor.apply_chat_template(chat(q), add_generation_prompt=True, tokenize=False) for q in QUESTIONS]
    images = faces(2 * len(prompts), seed=2)
    batch = processor(text=prompts, images=[images[2 * i:2 * i + 2] for i in range(len(prompts))],
                      padding=True, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    width = batch["input_ids"].shape[1]
    assert out.shape[0] == len(prompts) and width < out.shape[1] <= width + 8
    assert (out[:, :width] == batch["input_ids"]).all()


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_model_other_seed_other_weights(name, built, tmp_path):
    folder = built(name)
    again = build(name, tmp_path / "again", seed=0)
    other = build(name, tmp_path / "other", seed=1)
    for file in ("tokenizer.json", "config.json", "processor_config.json", "chat_template.jinja"):
        assert (folder / file).read_bytes() == (again / file).read_bytes(), file
    weights, same, different = (load_file(f / "model.safetensors") for f in (folder, again, other))
    assert weights.keys() == same.keys() == different.keys()
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not all(torch.equal(weights[k], different[k]) for k in weights)


def test_build_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build("llava", tmp_path / "m", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_rebuilding_into_a_folder_replaces_its_files(tmp_path):
    folder = build("gemma3", tmp_path / "m", seed=0)
    before = (folder / "model.safetensors").read_bytes()
    build("gemma3", folder, seed=1)
    assert (folder / "model.safetensors").read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind
