"""Chat vision-language models through transformers: the paper's MLLM protocol.

Per pair, one user turn holds the two face images (two separate image inputs,
A then B) and the prompt template's question. One ``generate`` call gives
both what we need:

* the logits of the first generated step that starts the answer (after any
  ``<think>…</think>`` block, blanks, quotes, markup and an "Answer:" label,
  exactly what the ``facebench`` rule skips; the first step when only blanks came
  out, none when a think block never closed), from which the score is
  ``log P(yes) − log P(no)``, each side summed over the tokenizer's variants of
  the template's answer words ("Yes", " yes", "YES", …);
* a short greedy continuation (``max_new_tokens``), the answer text, which the
  run's extraction rule (:mod:`facebench.extraction`) turns into yes / no / invalid.

``number`` templates (e.g. ``score-0-100``) score with the parsed number instead.
Pairs are batched with left padding; a batch that runs out of GPU memory is
halved and retried, and later batches keep the smaller size.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
import os
import warnings
from functools import cached_property
from pathlib import Path

from PIL import Image

from facebench.models import BACKENDS, PairVerifier
from facebench.paths import PROJECT_ROOT
from facebench.prompts import DEFAULT_PROMPT, answer_start, load_reading, reading_identity, strip_thinking

TINY_PREFIX = "tiny:"  # "tiny:<family>": a random-weight model built on first use (negative control, tests)


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message says where it was looked for and how to get it."""


def tiny_folder(family: str, seed: int = 0) -> Path:
    from facebench.paths import models_root

    return models_root() / "tiny" / f"{family}-seed{seed}"


def local_folder(model: str) -> Path | None:
    """The folder ``model`` names (absolute, or relative to the working directory or
    the checkout), or None when it is a hub id."""
    for candidate in (Path(model).expanduser(), PROJECT_ROOT / model):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _hub_unavailable(model: str, revision: str | None) -> str | None:
    """None when the hub id is in the local cache or can be downloaded, else why not."""
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(model, "config.json", revision=revision), str):
        return None
    how = (f"run `hf download {model}` on a machine with internet and copy the Hugging Face cache "
           f"({huggingface_hub.constants.HF_HUB_CACHE}) here, or pass a local folder as hf:/path/to/{model.split('/')[-1]}")
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return f"{model} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {how}"
    try:
        huggingface_hub.HfApi().model_info(model, revision=revision, timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot download it now
        return f"{model} is not in the local Hugging Face cache and the hub cannot be reached " \
               f"({type(exc).__name__}): {how}"
    return None


def answer_token_ids(tokenizer, words) -> list[int]:
    """Token ids that start an answer word, over case and leading-space variants.

    Variants that are one token each are preferred; a word that only exists as
    several tokens contributes its first token.
    """
    single, first = set(), set()
    for word in words:
        for variant in {word, word.lower(), word.capitalize(), word.upper()}:
            for text in (variant, " " + variant):
                ids = tokenizer.encode(text, add_special_tokens=False)
                (single if len(ids) == 1 else first).update(ids[:1])
    return sorted(single or first)


def checked_image_size(value) -> int | None:
    """The ``image_size`` setting, checked: None, or a whole number of pixels of at least 1.

    Raises
    ------
    ValueError
        ``value`` is a bool, a float, a string or below 1; the message names the setting.
        A float or a string is refused rather than converted: the run's identity hashes
        the setting as written, so ``224`` and ``"224"`` would be two runs of one thing.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"model setting image_size={value!r}: expected a whole number of pixels of at least 1 "
                         "(each image resized to image_size x image_size), or null for the images as given")
    return int(value)


# The weights loaded last, kept for the next verifier that asks for the same ones: a grid's
# variants of one model (another prompt, both orders, another image size) run one after
# another and load it once. One model at a time, so memory holds no more than before.
_LAST_LOADED: dict[tuple, tuple] = {}

@BACKENDS.register("hf")
class HFVisionLanguage(PairVerifier):
    """Any ``AutoModelForImageTextToText`` chat model, from the hub or a local folder.

    Parameters
    ----------
    model : str
        Hub id (``Qwen/Qwen2-VL-2B-Instruct``), local folder, or ``tiny:<family>``.
    revision : str, optional
        Hub commit, tag or branch; recorded with the commit actually loaded.
    dtype : {"auto", "bfloat16", "float16", "float32"}
        ``auto`` is bfloat16 on a GPU and float32 on the CPU.
    attn_implementation : str
        ``sdpa``, ``eager`` or ``flash_attention_2``.
    trust_remote_code : bool
        Off unless a registry entry says so: it runs code from the model's repo.
    prompt : str
        Template name in ``facebench/prompts.yaml``.
    extraction : str, optional
        The rule of ``facebench/extraction.yaml`` that reads answers into
        decisions; None: the template's own.
    image_size : int, optional
        Resize each image to ``image_size`` × ``image_size`` pixels (bicubic;
        a non-square image is stretched) before the processor, which then
        resizes as the model does; None hands the dataset's images on as
        they are. Qwen2/2.5-VL give one visual token per 28×28 pixels (Qwen3-VL
        per 32×32), so the size sets how many tokens a face gets; models with a
        fixed input (InternVL, LLaVA) resize again to it.
    max_new_tokens : int
        Length of the greedy continuation that holds the answer text.
    processor_kwargs : dict, optional
        Passed to ``AutoProcessor.from_pretrained`` (e.g. Qwen's ``max_pixels``).
    both_orders : bool
        Also score (B, A); its score, decision and answer go into ``raw_output``.
    seed : int
        Only for ``tiny:`` models: the seed of their random weights.
    """

    requires = ("torch", "transformers")

    def __init__(self, *, model: str, revision: str | None = None, dtype: str = "auto",
                 attn_implementation: str = "sdpa", trust_remote_code: bool = False,
                 prompt: str = DEFAULT_PROMPT, extraction: str | None = None, image_size: int | None = None,
                 max_new_tokens: int = 8, processor_kwargs: dict | None = None, both_orders: bool = False,
                 seed: int = 0):
        if dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"model setting dtype={dtype!r}: expected auto, bfloat16, float16 or float32")
        if int(max_new_tokens) < 1:
            raise ValueError(f"model setting max_new_tokens={max_new_tokens!r}: must be at least 1")
        self.model_name, self.revision, self.dtype_name = model, revision, dtype
        self.attn_implementation, self.trust_remote_code = attn_implementation, bool(trust_remote_code)
        self.prompt, self.rule = load_reading(prompt, extraction)
        self.image_size = checked_image_size(image_size)
        self.max_new_tokens, self.both_orders, self.seed = int(max_new_tokens), bool(both_orders), int(seed)
        self.processor_kwargs = dict(processor_kwargs or {})
        self.batch_limit: int | None = None  # set when a batch ran out of memory

    @classmethod
    def identity(cls, settings: dict) -> dict:
        # Checked here too: a run's folder is named by its identity before any model
        # loads, so a bad size is refused before minutes of loading weights, not after.
        checked_image_size(settings.get("image_size"))
        return reading_identity(settings)

    @classmethod
    def unavailable(cls, settings: dict) -> str | None:
        why = super().unavailable(settings)
        if why:
            return why
        model = settings["model"]
        if model.startswith(TINY_PREFIX):
            from facebench.tiny_models import FAMILIES

            family = model[len(TINY_PREFIX):]
            return None if family in FAMILIES else f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}"
        folder = local_folder(model)
        if folder is not None:
            return None if (folder / "config.json").is_file() else f"{folder} has no config.json"
        if model.count("/") != 1 or model.startswith(("/", ".", "~")):
            return f"{model} is neither a folder nor a hub id (owner/name)"
        return _hub_unavailable(model, settings.get("revision"))

    # -- loading -----------------------------------------------------------------------------------

    @cached_property
    def source(self) -> str:
        if self.model_name.startswith(TINY_PREFIX):
            from facebench.tiny_models import build

            folder = tiny_folder(self.model_name[len(TINY_PREFIX):], self.seed)
            if not (folder / "config.json").is_file():
                build(self.model_name[len(TINY_PREFIX):], folder, seed=self.seed)
            return str(folder)
        folder = local_folder(self.model_name)
        return str(folder) if folder else self.model_name

    @cached_property
    def device(self):
        import torch

        return torch.device(os.environ.get("FACEBENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))

    @cached_property
    def torch_dtype(self):
        import torch

        if self.dtype_name == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype_name)

    @cached_property
    def _loaded(self):
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # facebench shows its own progress, per pair

        why = self.unavailable({"model": self.model_name, "revision": self.revision})
        if why:
            raise ModelLoadError(why)
        key = (self.source, self.revision, str(self.torch_dtype), self.attn_implementation, self.trust_remote_code,
               json.dumps(self.processor_kwargs, sort_keys=True, default=str), str(self.device))
        if key in _LAST_LOADED:
            return _LAST_LOADED[key]
        _LAST_LOADED.clear()  # the previous model's memory goes before the next one loads
        common = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        try:
            processor = AutoProcessor.from_pretrained(self.source, **common, **self.processor_kwargs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model = AutoModelForImageTextToText.from_pretrained(
                    self.source, dtype=self.torch_dtype, attn_implementation=self.attn_implementation, **common)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {self.model_name} from {self.source}: {exc}") from exc
        model.to(self.device).eval()
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # the answer position is then the last one in every row
        if getattr(processor, "padding_side", None) is not None:
            processor.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        _LAST_LOADED[key] = processor, model
        return processor, model

    @cached_property
    def rendered_prompt(self) -> str:
        """The chat text every pair gets, image placeholders included (recorded in the manifest)."""
        processor, _ = self._loaded
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                  {"type": "text", "text": self.prompt.question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @cached_property
    def _add_special_tokens(self) -> bool:
        # Templates that write the BOS themselves (Gemma 3, Idefics3) would get a
        # second one from the tokenizer; apply_chat_template avoids it the same way.
        bos = self._loaded[0].tokenizer.bos_token
        return not (bos and self.rendered_prompt.startswith(bos))

    @cached_property
    def answer_ids(self) -> tuple[list[int], list[int]]:
        tokenizer = self._loaded[0].tokenizer
        yes, no = answer_token_ids(tokenizer, self.prompt.yes), answer_token_ids(tokenizer, self.prompt.no)
        if set(yes) & set(no):
            raise ValueError(f"prompt {self.prompt.name!r}: with {self.model_name}'s tokenizer the answers "
                             f"{self.prompt.yes} and {self.prompt.no} share first tokens "
                             f"{tokenizer.convert_ids_to_tokens(sorted(set(yes) & set(no)))}")
        return yes, no

    @cached_property
    def _eos_ids(self) -> set[int]:
        _, model = self._loaded
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return {int(e) for e in eos if e is not None}

    def info(self) -> dict:
        processor, model = self._loaded
        tokenizer = processor.tokenizer
        yes, no = self.answer_ids if self.prompt.kind == "yesno" else ([], [])
        return {
            "model_id": self.model_name, "revision": getattr(model.config, "_commit_hash", None) or self.revision,
            "weights_sha256": _folder_sha256(Path(self.source)) if Path(self.source).is_dir() else None,
            "architecture": type(model).__name__, "device": str(self.device), "dtype": str(self.torch_dtype),
            "attn_implementation": model.config._attn_implementation,
            "prompt": self.rendered_prompt, "prompt_template": self.prompt.identity,
            "extraction": self.rule.identity,
            "prompt_language": self.prompt.language,
            "answer_tokens": {"yes": tokenizer.convert_ids_to_tokens(yes), "no": tokenizer.convert_ids_to_tokens(no)},
            "image_handling": "the dataset's images as they are" if self.image_size is None
            else f"resized to {self.image_size}x{self.image_size} (bicubic)",
            "both_orders": self.both_orders,
        }

    # -- scoring -----------------------------------------------------------------------------------

    def score_pairs(self, pairs: list[tuple[Image.Image, Image.Image]]) -> list[dict]:
        pairs = [(self._image(a), self._image(b)) for a, b in pairs]
        if not self.both_orders:
            return [_row(r) for r in self._score_with_backoff(pairs)]
        both = self._score_with_backoff(pairs + [(b, a) for a, b in pairs])
        return [_row(ab, ba) for ab, ba in zip(both[:len(pairs)], both[len(pairs):])]

    def _image(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if self.image_size:
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return image

    def _score_with_backoff(self, pairs) -> list[dict]:
        import torch

        out, i = [], 0
        size = min(len(pairs), self.batch_limit or len(pairs))
        while i < len(pairs):
            try:
                out += self._score_batch(pairs[i:i + size])
                i += size
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                size = self.batch_limit = size // 2
                torch.cuda.empty_cache()
                warnings.warn(f"{self.model_name}: out of GPU memory; batch size halved to {size}", stacklevel=2)
        return out

    def _score_batch(self, pairs) -> list[dict]:
        import torch

        processor, model = self._loaded
        inputs = processor(text=[self.rendered_prompt] * len(pairs), images=[list(p) for p in pairs],
                           padding=True, return_tensors="pt", add_special_tokens=self._add_special_tokens)
        inputs = inputs.to(self.device, dtype=self.torch_dtype)
        config = copy.deepcopy(model.generation_config)
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=self.max_new_tokens,
                      output_logits=True, return_dict_in_generate=True,
                      pad_token_id=processor.tokenizer.pad_token_id)
        with torch.inference_mode():
            out = model.generate(**inputs, generation_config=config)
        new = out.sequences[:, inputs["input_ids"].shape[1]:].tolist()
        logits = torch.stack(out.logits, dim=1)  # (batch, steps, vocab)
        return [self._read(ids, logits[r]) for r, ids in enumerate(new)]

    def _read(self, ids: list[int], logits) -> dict:
        tokenizer = self._loaded[0].tokenizer
        end = next((k for k, t in enumerate(ids) if t in self._eos_ids), len(ids))
        ids = ids[:end]
        text = tokenizer.decode(ids, skip_special_tokens=False)
        answer = self.rule.parse(self.prompt, text)
        if self.prompt.kind == "number":
            return {"score": answer.value, "decision": answer.decision, "answer": text, "answer_step": None}
        step = answer_start([tokenizer.decode(ids[:k + 1], skip_special_tokens=False) for k in range(len(ids))])
        if step is None and strip_thinking(text) is not None:
            step = 0  # only blanks came out: the first position is still where the answer belongs
        score = math.nan
        if step is not None:
            logp = logits[step].float().log_softmax(-1)
            yes, no = self.answer_ids
            score = float(logp[yes].logsumexp(0) - logp[no].logsumexp(0))
        return {"score": score, "decision": answer.decision, "answer": text, "answer_step": step}


def _row(ab: dict, ba: dict | None = None) -> dict:
    raw = {"answer": ab["answer"], "answer_step": ab["answer_step"]}
    if ba is not None:
        raw["ba"] = {"score": ba["score"], "decision": ba["decision"], "answer": ba["answer"]}
    return {"score": ab["score"], "decision": ab["decision"], "raw_output": json.dumps(raw, ensure_ascii=False)}


def _folder_sha256(folder: Path, *, max_bytes: int = 200 * 2**20) -> str | None:
    """sha256 over a local model folder's weight files, when small enough to hash quickly."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files or sum(p.stat().st_size for p in files) > max_bytes:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()
