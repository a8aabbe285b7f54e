"""Loading models and tokenizers, fingerprinting them, and plain batched chat generation.

Shared by every stage that runs a model. Generation here records nothing; routing capture lives in
:mod:`steermoe.routing`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steermoe.errors import InputError

__all__ = [
    "resolve_model_path",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "resolve_device",
    "render_chat",
    "GenerationOutput",
    "generate",
    "trim_generated",
]


def resolve_model_path(model_cfg, cache_dir: str | Path | None = None) -> Path:
    """The local folder of the model a config names, building the demo model on first use."""
    if model_cfg.source == "demo":
        from steermoe.demo.model import ensure_demo_model

        return ensure_demo_model(cache_dir=cache_dir, arch=model_cfg.demo_arch)
    path = Path(model_cfg.source).expanduser()
    if not path.exists():
        raise InputError(f"model.source: {path} does not exist; give a local Hugging Face model folder (no hub access here) or 'demo'")
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


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    # Decoder-only batched generation needs left padding.
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot load model ({str(e).splitlines()[0]})") from None
    model.to(resolve_device(device))
    model.eval()
    return model


def model_fingerprint(path: str | Path) -> str:
    """Hash of the model's config and weight files: the identity caches and patches key on."""
    path = Path(path)
    digest = hashlib.sha256()
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    digest.update(json.dumps(config, sort_keys=True).encode())
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not weights:
        raise InputError(f"{path}: no weight files (*.safetensors) found")
    for w in weights:
        digest.update(w.name.encode())
        with open(w, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
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
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat_template_kwargs: dict | None = None,
    progress: bool = True,
    **generate_kwargs: Any,
) -> GenerationOutput:
    """Answer each conversation with batched, left-padded ``model.generate``."""
    import torch
    from tqdm.auto import tqdm

    eos_ids = eos_ids_of(model, tokenizer)
    prompts_ids, generated, texts = [], [], []
    device = next(model.parameters()).device
    bar = tqdm(total=len(conversations), desc="generating", unit="prompt", disable=not progress)
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        rendered = [render_chat(tokenizer, c, chat_template_kwargs) for c in batch]
        enc = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        if do_sample:
            torch.manual_seed(seed + start)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=top_p if do_sample else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                **generate_kwargs,
            )
        width = enc["input_ids"].shape[1]
        for i in range(len(batch)):
            mask = enc["attention_mask"][i].bool()
            prompts_ids.append(enc["input_ids"][i][mask].tolist())
            gen, _ = trim_generated(out[i, width:].tolist(), eos_ids, max_new_tokens)
            generated.append(gen)
            texts.append(tokenizer.decode(gen, skip_special_tokens=True))
        bar.update(len(batch))
    bar.close()
    return GenerationOutput(prompts_ids, generated, texts)
