"""Loading models and tokenizers, fingerprinting them, and plain batched chat generation.

Shared by every stage that runs a model. Generation here records nothing; routing capture lives in
:mod:`steermoe.routing`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from steermoe.errors import InputError

if TYPE_CHECKING:
    from steermoe.generation import GenerationSettings

__all__ = [
    "ModelSource",
    "MODEL_SOURCES",
    "register_model_source",
    "parse_model_source",
    "resolve_model_path",
    "Loaded",
    "load_pretrained",
    "load_hf_config",
    "model_section",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "resolve_device",
    "render_chat",
    "GenerationOutput",
    "generate",
    "trim_generated",
    "release_memory",
]


@dataclass(frozen=True)
class ModelSource:
    """A kind of ``model.source`` other than a local folder: ``<scheme>`` or ``<scheme>:<argument>``."""

    scheme: str
    resolve: Callable[[Any, str, Path | None], Path]  # (model section, argument, cache dir) -> local HF folder
    help: str
    # (model section, argument) -> preflight.ModelShape, known before the model is built; None: not known.
    shape: Callable[[Any, str], Any] | None = None


MODEL_SOURCES: dict[str, ModelSource] = {}


def register_model_source(scheme: str, resolve: Callable[[Any, str, Path | None], Path], help: str, shape: Callable[[Any, str], Any] | None = None) -> ModelSource:
    """Add a model source (e.g. ``random:<shape>``); registering a scheme twice is an error."""
    if scheme in MODEL_SOURCES:
        raise ValueError(f"model source {scheme!r} is already registered")
    MODEL_SOURCES[scheme] = ModelSource(scheme, resolve, help, shape)
    return MODEL_SOURCES[scheme]


def _demo_source(model_cfg, argument: str, cache_dir: Path | None) -> Path:
    from steermoe.demo.model import ensure_demo_model
    from steermoe.demo.recipe import DemoRecipe

    recipe = DemoRecipe.of_size(model_cfg.demo_size)
    return ensure_demo_model(cache_dir=cache_dir, arch=model_cfg.demo_arch, recipe=recipe)


def _demo_shape(model_cfg, argument: str):
    from steermoe.demo.recipe import DEMO_SHAPE
    from steermoe.preflight import ModelShape

    return ModelShape(tuple(range(DEMO_SHAPE["num_layers"])), DEMO_SHAPE["num_experts"], DEMO_SHAPE["experts_per_token"])


register_model_source("demo", _demo_source, "the built-in demo model (built once into the cache dir; arch: model.demo_arch, size: model.demo_size)", _demo_shape)


def _random_source(model_cfg, argument: str, cache_dir: Path | None) -> Path:
    from steermoe.random_model import ensure_random_model

    return ensure_random_model(model_cfg, cache_dir)


def _random_shape(model_cfg, argument: str):
    from steermoe.random_model import random_shape

    return random_shape(model_cfg)


register_model_source(
    "random", _random_source,
    "a real architecture and shape with seeded random weights built on the device, no weights on disk: "
    "random:<known shape or config.json> (seed: model.init_seed; see steermoe.random_model)",
    _random_shape,
)


def parse_model_source(source: str) -> tuple[ModelSource | None, str]:
    """(the registered source, its argument) for ``scheme[:argument]``; (None, source) for a folder."""
    scheme, sep, argument = source.partition(":")
    if scheme in MODEL_SOURCES and (sep or source == scheme):
        return MODEL_SOURCES[scheme], argument
    return None, source


def resolve_model_path(model_cfg, cache_dir: str | Path | None = None) -> Path:
    """The local folder of the model a config names (a registered source builds it on first use)."""
    source, argument = parse_model_source(model_cfg.source)
    if source is not None:
        return Path(source.resolve(model_cfg, argument, Path(cache_dir) if cache_dir is not None else None))
    path = Path(model_cfg.source).expanduser()
    if not path.exists():
        kinds = ", ".join(f"'{s}'" for s in MODEL_SOURCES)
        raise InputError(f"model.source: {path} does not exist; give a local Hugging Face model folder (no hub access here) or one of {kinds}")
    if not (path / "config.json").exists():
        raise InputError(f"model.source: {path} has no config.json; is it a Hugging Face model folder?")
    return path


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"model.device: {device!r} asked for, but no CUDA device is available; use 'cpu' or 'auto'")
    return device


class Loaded(NamedTuple):
    model: Any  # None when only the tokenizer was asked for
    tokenizer: Any


def load_pretrained(model_cfg, path: str | Path, *, patch: str | Path | None = None, weights: bool = True, tokenizer: bool = True) -> Loaded:
    """The one door every model and tokenizer load goes through: the folder ``path`` loaded as the
    model section says (dtype, device, attention kernel, ``trust_remote_code``), with an expert patch
    applied when given. ``weights=False`` / ``tokenizer=False`` leave that part out (``None``)."""
    model = _weights(model_cfg, path) if weights else None
    if model is not None and patch is not None:
        from steermoe.finetune.patch import apply_patch

        model = apply_patch(model, patch, fingerprint=model_fingerprint(path))
    tok = _tokenizer(model_cfg, path) if tokenizer else None
    if model is not None and tok is not None:
        _check_vocabulary(model, tok, path)
    return Loaded(model, tok)


def _check_vocabulary(model, tokenizer, path) -> None:
    """A tokenizer with ids past the embedding table belongs to another model (and would crash mid-batch)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise InputError(
            f"{path}: the tokenizer's vocabulary ({len(tokenizer)} tokens) is larger than the model's embedding table "
            f"({rows} rows); the tokenizer belongs to another model: put the model's own tokenizer files in the folder"
        )


def load_hf_config(model_cfg, path: str | Path):
    """The model's transformers config (no weights), read as the model section allows."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0]
        raise InputError(f"{path}: cannot read the model config ({reason}){_trust_hint(reason)}") from None


def _trust_hint(reason: str) -> str:
    return "; set model.trust_remote_code=true if you trust the folder's code" if "custom code" in reason else ""


def _tokenizer(model_cfg, path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=model_cfg.trust_remote_code)
    # Decoder-only batched generation needs left padding.
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _weights(model_cfg, path: str | Path):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = model_cfg.dtype
    options = {"dtype": "auto" if dtype == "auto" else getattr(torch, dtype), "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        options["attn_implementation"] = model_cfg.attn_implementation
    from steermoe.random_model import build_random_model, is_random_folder

    if is_random_folder(path):  # seeded random weights, built on the device (no weight files)
        extra = {"attn_implementation": model_cfg.attn_implementation} if model_cfg.attn_implementation else {}
        return build_random_model(path, dtype=dtype, device=resolve_device(model_cfg.device), **extra)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **options)
    except Exception as e:  # noqa: BLE001 - a corrupt folder fails inside transformers/safetensors in many ways
        if not isinstance(e, (OSError, ValueError)) and type(e).__name__ != "SafetensorError":
            raise
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if type(e).__name__ == "SafetensorError":
            reason = f"a weights file is truncated or corrupt: {reason}; copy the model folder again"
        raise InputError(f"{path}: cannot load model ({reason}){_trust_hint(reason)}") from None
    model.to(resolve_device(model_cfg.device))
    model.eval()
    return model


def model_section(**settings):
    """A model section from keyword settings, for callers that have none (tests, tools)."""
    from steermoe.config import ModelConfig

    return ModelConfig(**settings)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """:func:`load_pretrained`'s tokenizer with default settings."""
    return load_pretrained(model_section(trust_remote_code=trust_remote_code), path, weights=False).tokenizer


def load_model(path: str | Path, dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False):
    """:func:`load_pretrained`'s model for callers without a model section."""
    section = model_section(dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    return load_pretrained(section, path, tokenizer=False).model


def model_fingerprint(path: str | Path) -> str:
    """Hash of the model's config and weight files: the identity caches and patches key on. A random
    source's folder has no weights: its fingerprint is that of its config and seed (nothing hashed).

    Hashing every weight byte takes minutes on a 60 GB model, so the result is kept per folder (in
    ``<cache dir>/fingerprints/``) with the size and mtime of each weight file, and reused while
    those are unchanged; any change re-hashes every byte. The value is the full hash either way."""
    from steermoe.random_model import MARKER, is_random_folder, random_fingerprint

    path = Path(path).resolve()
    if is_random_folder(path):
        return random_fingerprint(json.loads((path / MARKER).read_text(encoding="utf-8")))
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not weights:
        raise InputError(f"{path}: no weight files (*.safetensors) found")
    config_text = json.dumps(config, sort_keys=True)
    stamp = [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in weights]
    memo = _fingerprint_memo(path)
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if known["config"] == config_text and known["weights"] == stamp:
            return known["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no memo, or an unreadable one: hash
    fingerprint = _hash_model_files(config_text, weights)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"path": str(path), "config": config_text, "weights": stamp, "fingerprint": fingerprint}), encoding="utf-8")
    os.replace(tmp, memo)
    return fingerprint


def _fingerprint_memo(path: Path) -> Path:
    from steermoe.config import default_cache_dir

    return default_cache_dir() / "fingerprints" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"


def _hash_model_files(config_text: str, weights: list[Path]) -> str:
    from tqdm.auto import tqdm

    digest = hashlib.sha256(config_text.encode())
    total = sum(w.stat().st_size for w in weights)
    with tqdm(total=total, unit="B", unit_scale=True, desc="fingerprinting weights", disable=total < (1 << 30)) as bar:
        for w in weights:
            digest.update(w.name.encode())
            with open(w, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    digest.update(chunk)
                    bar.update(len(chunk))
    return digest.hexdigest()[:16]


def render_chat(tokenizer, messages: list[dict], chat_template_kwargs: dict | None = None) -> str:
    """The prompt text for a conversation, ready for the assistant's turn."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
    )


@dataclass
class GenerationOutput:
    prompt_token_ids: list[list[int]]
    generated_token_ids: list[list[int]]  # stops at (and includes) EOS; no padding
    texts: list[str]


def trim_generated(row: Sequence[int], eos_ids: set[int], max_new_tokens: int) -> tuple[list[int], str]:
    """Generated ids up to and including the first EOS, at most ``max_new_tokens``; and why it stopped."""
    out = []
    for t in list(row)[:max_new_tokens]:
        out.append(int(t))
        if int(t) in eos_ids:
            return out, "eos"
    return out, "length"


def eos_ids_of(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = {int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def generate(
    model, tokenizer, conversations: Sequence[list[dict]], generation: GenerationSettings | None = None, *, progress: bool = True,
    engine: str = "generate",
) -> GenerationOutput:
    """Answer each conversation as ``generation`` says (default settings when ``None``) with batched, left-padded
    ``model.generate`` (``engine="generate"``), or with the static-cache decoder that routing collection uses
    (``engine="static"``: on CUDA each step a replayed graph)."""
    from tqdm.auto import tqdm

    from steermoe.generation import GenerationSettings

    g = generation or GenerationSettings()
    if engine not in ("generate", "static"):
        raise InputError(f"generation engine {engine!r} is not one of generate, static")
    eos_ids = eos_ids_of(model, tokenizer)
    rendered = [render_chat(tokenizer, c, g.chat_template_kwargs) for c in conversations]
    step = _static_step(model, tokenizer, g, eos_ids) if engine == "static" else _generate_step(model, tokenizer, g)
    prompts_ids, generated, texts = [], [], []
    bar = tqdm(total=len(conversations), desc="generating" + (" (static)" if engine == "static" else ""), unit="prompt", disable=not progress)
    for start in range(0, len(rendered), g.batch_size):
        batch_prompts, rows = step(rendered[start : start + g.batch_size], start)
        for prompt, row in zip(batch_prompts, rows):
            gen, _ = trim_generated(row, eos_ids, g.max_new_tokens)
            prompts_ids.append(prompt)
            generated.append(gen)
            texts.append(tokenizer.decode(gen, skip_special_tokens=True))
        bar.update(len(rows))
    bar.close()
    return GenerationOutput(prompts_ids, generated, texts)


def _generate_step(model, tokenizer, g: GenerationSettings):
    """``step(rendered prompts, first index) -> (prompt ids, generated rows)`` with ``model.generate``."""
    import torch

    device = next(model.parameters()).device

    def step(rendered: list[str], start: int):
        enc = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        if g.do_sample:
            torch.manual_seed(g.seed + start)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, temperature=g.temperature if g.do_sample else None,
                top_p=g.top_p if g.do_sample else None, top_k=None, pad_token_id=tokenizer.pad_token_id,
            )
        width = enc["input_ids"].shape[1]
        prompts = [enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist() for i in range(len(rendered))]
        return prompts, [out[i, width:].tolist() for i in range(len(rendered))]

    return step


def _static_step(model, tokenizer, g: GenerationSettings, eos_ids: set[int]):
    """The same step with the static-cache decoder (its batch seeding: ``seed + first index``)."""
    from steermoe.routing.static_decode import StaticDecoder

    decoder = StaticDecoder(model, g, pad_token_id=tokenizer.pad_token_id, eos_token_ids=sorted(eos_ids))

    def step(rendered: list[str], start: int):
        prompts = [list(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
        return prompts, decoder(prompts, start)

    return step


def release_memory() -> None:
    """Return what models freed to the device: collect reference cycles, then empty PyTorch's CUDA cache.
    Stages call it when a model goes out of scope, so the next stage (or a fine-tuning process) finds the GPU free."""
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
