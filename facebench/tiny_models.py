"""Tiny random-weight vision-language models of real architectures, built offline.

Tests and the report's negative control need MLLMs that load and run exactly as
hub checkpoints do, without downloading gigabytes. :func:`build` writes such a
model into a folder: the family's real config, model, processor,
image-processor and tokenizer classes (transformers), its special tokens and a
chat template written after the real one, at toy sizes (2 layers, hidden size
64, a byte-level BPE vocabulary of a few hundred tokens trained on the fly, a
handful of tokens per image). Per-family sizes and tokens live in
``tiny_models.yaml``; the weights are random, so the models answer at chance.

The folder loads the way users' models load::

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from facebench.files import read_yaml
from facebench.registry import UnknownNameError, suggest

SPEC_FILE = Path(__file__).with_name("tiny_models.yaml")


@dataclass(frozen=True)
class Family:
    """What a tiny family copies, and how its prompts mark images.

    The backend should rely on the saved processor; these fields describe the
    family for tests, logs and the report.

    Attributes
    ----------
    name : str
        The family's key in :data:`FAMILIES` (``"qwen2-vl"``).
    mirrors : str
        The hub checkpoint whose layout it copies.
    config_class : str
        The transformers config class (``"Qwen2VLConfig"``).
    image_placeholder : str
        What the chat template writes for each image.
    image_token : str
        The token the processor repeats once per visual feature.
    """

    name: str
    mirrors: str
    config_class: str
    image_placeholder: str
    image_token: str
    spec: dict = field(repr=False, compare=False)


def _load_families(path: Path) -> tuple[dict, dict[str, Family]]:
    data = read_yaml(path)
    families = {
        name: Family(name=name, mirrors=spec["mirrors"], config_class=spec["config"]["class"],
                     image_placeholder=spec["image_placeholder"], image_token=spec["image_token"], spec=spec)
        for name, spec in data["families"].items()
    }
    return data["tokenizer"], families


_TOKENIZER_SPEC, FAMILIES = _load_families(SPEC_FILE)


def get_family(name: str) -> Family:
    """The :class:`Family` called ``name``; an unknown name raises ``ValueError``.

    Examples
    --------
    >>> get_family("qwen2-vl").image_token
    '<|image_pad|>'
    >>> get_family("qwen2vl")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    facebench.registry.UnknownNameError: unknown tiny model family 'qwen2vl'. Did you mean 'qwen2-vl' ...
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownNameError(f"{suggest(name, FAMILIES, what='tiny model family')} "
                               f"(families are defined in {SPEC_FILE})") from None


# -- tokenizer ------------------------------------------------------------------------------------

def special_tokens(family: Family) -> list[str]:
    """The family's special tokens in vocabulary order (ids 0, 1, ...), without repeats.

    Examples
    --------
    >>> special_tokens(get_family("llava"))
    ['<s>', '</s>', '<unk>', '<pad>', '<image>']
    """
    spec = family.spec["tokenizer"]
    n = spec.get("row_col_grid", 0)
    grid = [f"<row_{i}_col_{j}>" for i in range(1, n + 1) for j in range(1, n + 1)]
    tokens = [*spec["named"].values(), *spec["model"].values(), *spec["extra"], *grid]
    return list(dict.fromkeys(tokens))


def _training_texts(tokenizer_spec: dict):
    # Each answer word, alone and after a space, often enough to win a merge
    # over the corpus' own pairs: real vocabularies have them as single tokens.
    for _ in range(tokenizer_spec["answer_repeats"]):
        for word in tokenizer_spec["answer_words"]:
            yield word
            yield f" {word}"
    yield from tokenizer_spec["corpus"]


def train_tokenizer(family: Family):
    """A byte-level BPE tokenizer for ``family``, trained on the in-file corpus.

    Returns a ``transformers.PreTrainedTokenizerFast`` with the family's special
    tokens at the lowest ids and its multimodal tokens as attributes
    (``tokenizer.image_token``, ``tokenizer.image_token_id``, ...).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = family.spec["tokenizer"]
    specials = special_tokens(family)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=_TOKENIZER_SPEC["vocab_size"], special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_training_texts(_TOKENIZER_SPEC), trainer=trainer)
    if spec["add_bos"]:
        bos = spec["named"]["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))])
    else:
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    max_length = family.spec["config"]["kwargs"]["text_config"]["max_position_embeddings"]
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, **spec["named"], **spec["model"],
        extra_special_tokens=[t for t in specials if t not in {*spec["named"].values(), *spec["model"].values()}],
        model_max_length=max_length, chat_template=family.spec["chat_template"])


# -- processor and model --------------------------------------------------------------------------

def _instance(entry: dict, **extra):
    import transformers

    return getattr(transformers, entry["class"])(**copy.deepcopy(entry["kwargs"]), **extra)


def make_processor(family: Family, tokenizer):
    """The family's real processor class around ``tokenizer`` and tiny image/video processors."""
    spec = family.spec
    parts = {"image_processor": _instance(spec["image_processor"]), "tokenizer": tokenizer}
    if "video_processor" in spec:
        parts["video_processor"] = _instance(spec["video_processor"])
    return _instance(spec["processor"], chat_template=spec["chat_template"], **parts)


def make_config(family: Family, tokenizer):
    """The family's real config class at tiny sizes, with the tokenizer's vocabulary and token ids."""
    import transformers

    spec = family.spec["config"]
    kwargs = copy.deepcopy(spec["kwargs"])
    # convert_tokens_to_ids maps a list to a list: an eos may be several tokens
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in spec["token_ids"].items()}
    text_ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in spec["text_token_ids"].items()}
    kwargs["text_config"].update(vocab_size=len(tokenizer), **text_ids)
    return getattr(transformers, spec["class"])(**kwargs, **ids, dtype="float32")


def make_model(config, *, seed: int):
    """A float32 model of ``config`` with random weights drawn after ``torch.manual_seed(seed)``.

    The global RNG state is restored afterwards, so building a model does not
    change what a caller's own random draws give.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        # Some weights start at zero and only training moves them: Gemma3's image
        # projection (the model would ignore its images), InternViT's position
        # embeddings and CLS token. Draw such matrices like the others; zero
        # biases and (1 + w) norm weights stay as they are.
        std = config.get_text_config().initializer_range
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim >= 2 and not param.any():
                    param.normal_(0.0, std)
    model.eval()
    return model


def _set_generation_tokens(model, family: Family, tokenizer) -> None:
    gen = model.generation_config
    for key, tokens in family.spec["config"]["text_token_ids"].items():
        setattr(gen, key, tokenizer.convert_tokens_to_ids(tokens))


def build(family: str, folder: Path | str, *, seed: int = 0) -> Path:
    """Build a tiny random-weight model of ``family`` and save it to ``folder``.

    The folder holds what a hub checkpoint holds (config, safetensors weights,
    generation config, tokenizer, image/video processor config, chat template),
    so ``AutoProcessor.from_pretrained(folder)`` and
    ``AutoModelForImageTextToText.from_pretrained(folder)`` load it as they load
    a user's model. The same ``family`` and ``seed`` give the same tokenizer and
    weights. ``config.json`` is written last: a folder that has one is complete.

    Parameters
    ----------
    family : str
        A key of :data:`FAMILIES` (``"qwen2-vl"``, ``"llava"``, ...).
    folder : path
        Created if missing; files already there with the same names are replaced.
    seed : int, keyword-only
        Seed of the random weights.

    Returns
    -------
    Path
        ``folder``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     files = sorted(path.name for path in build("llava", tmp, seed=0).iterdir())
    >>> files  # doctest: +NORMALIZE_WHITESPACE
    ['chat_template.jinja', 'config.json', 'generation_config.json', 'model.safetensors',
     'processor_config.json', 'tokenizer.json', 'tokenizer_config.json']
    >>> build("no-such-family", "unused")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    facebench.registry.UnknownNameError: unknown tiny model family 'no-such-family'. ...
    """
    spec = get_family(family)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    folder = Path(folder)
    tokenizer = train_tokenizer(spec)
    processor = make_processor(spec, tokenizer)
    model = make_model(make_config(spec, tokenizer), seed=seed)
    _set_generation_tokens(model, spec, tokenizer)

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        files = sorted(os.listdir(tmp), key=lambda name: name == "config.json")
        for name in files:
            os.replace(os.path.join(tmp, name), folder / name)
    return folder
