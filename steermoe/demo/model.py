"""Build the demo model (offline, deterministic) and cache it by recipe hash.

``build_demo_model`` writes a standard Hugging Face folder: ``config.json``, ``model.safetensors``,
``tokenizer.json`` + ``tokenizer_config.json`` (ChatML template), ``generation_config.json`` and
``steermoe_demo.json`` (recipe, corpus digest, designed unsafe experts, training loss).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from steermoe.demo.recipe import DEMO_ARCHS, DemoRecipe
from steermoe.errors import InputError

__all__ = ["build_demo_model", "ensure_demo_model", "demo_model_dir", "DemoRecipe"]

META_FILE = "steermoe_demo.json"


def _check_arch(arch: str) -> None:
    if arch not in DEMO_ARCHS:
        raise InputError(f"--arch {arch!r}: unknown demo architecture; choose one of {', '.join(DEMO_ARCHS)}")


def _corpus(recipe: DemoRecipe):
    from steermoe.demo.corpus import build_corpus, corpus_digest

    examples = build_corpus(recipe.corpus_fraction, recipe.seed)
    return examples, corpus_digest(examples)


def build_demo_model(out_dir: str | Path, recipe: DemoRecipe | None = None, progress: bool = True, device: str = "cpu") -> Path:
    """Train the demo model from scratch into ``out_dir`` (created; must not hold a model already). The shipped model
    is built on the CPU; ``device="cuda"`` trains the same recipe on a GPU, another model bit for bit (other float
    kernels), for screening variants (``benchmarks/demo_world_sweep.py``)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from steermoe.demo.tokenizer import IM_END, PAD, save_tokenizer, train_tokenizer
    from steermoe.demo.training import designed_unsafe_experts, encode_examples, model_config, train_model

    recipe = recipe or DemoRecipe()
    _check_arch(recipe.arch)
    out = Path(out_dir)
    if (out / "model.safetensors").exists():
        raise InputError(f"{out}: already holds a model; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    examples, digest = _corpus(recipe)

    tok = train_tokenizer([t for ex in examples for t in (ex.prompt, ex.answer)], recipe.vocab_size)
    pad_id, eos_id = tok.token_to_id(PAD), tok.token_to_id(IM_END)
    encoded = encode_examples(examples, tok, recipe.max_length, recipe.routing_prior_span)

    # Seeded init, deterministic kernels and the recipe's own thread count: same recipe + machine -> the same
    # bytes, whatever the machine's core count (the threads are part of the recipe, so of its cache key).
    if device.startswith("cuda"):  # deterministic cuBLAS needs its workspace set before the first matrix product
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(recipe.build_threads)
    try:
        torch.manual_seed(recipe.seed)
        config = model_config(recipe, tok.get_vocab_size(), pad_id, eos_id)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
        result = train_model(model, encoded, recipe, pad_id, progress=progress)
        model.to("cpu")
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)

    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=eos_id, do_sample=False, max_new_tokens=64
    )
    model.save_pretrained(str(out))
    save_tokenizer(tok, out, recipe.max_length * 4)
    meta = {
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.digest(digest),
        "corpus_digest": digest,
        "corpus_examples": len(examples),
        "designed_unsafe_experts": {str(k): v for k, v in designed_unsafe_experts(recipe).items()},
        "final_train_loss": round(result.final_loss, 4),
        "train_seconds": round(result.seconds, 1),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def demo_model_dir(cache_dir: str | Path | None = None, recipe: DemoRecipe | None = None) -> Path:
    """Where the cached demo model of this recipe lives: ``<cache>/demo-models/<arch>-<hash>``."""
    from steermoe.config import default_cache_dir

    recipe = recipe or DemoRecipe()
    _, digest = _corpus(recipe)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "demo-models" / f"{recipe.arch}-{recipe.digest(digest)}"


def ensure_demo_model(
    cache_dir: str | Path | None = None,
    arch: str = "qwen3_moe",
    recipe: DemoRecipe | None = None,
    progress: bool = True,
    shipped: bool = True,
) -> Path:
    """The cached demo model folder. On first use it is copied from the package when the package ships this
    recipe's build (:mod:`steermoe.demo.shipped`; checksums checked) unless ``shipped=False``, else built; either
    way in a temp folder renamed into place."""
    from steermoe.demo.shipped import install_shipped, shipped_model
    from steermoe.files import atomic_dir

    _check_arch(arch)
    recipe = (recipe or DemoRecipe()).with_arch(arch)
    target = demo_model_dir(cache_dir, recipe)
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock"):
        if (target / "model.safetensors").exists():  # another process built it while we waited
            return target
        source = shipped_model(target.name) if shipped else None
        if source is not None:
            if progress:
                print(f"demo model: the package's build of recipe {target.name} (checksums checked), no training needed", file=sys.stderr)
            return install_shipped(source, target)
        with atomic_dir(target) as tmp:
            build_demo_model(tmp, recipe, progress=progress)
    return target


class _lock:
    """An exclusive file lock (POSIX), so two processes never train the same model at once."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fh = open(self.path, "a")
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except ImportError:  # Windows: no lock, the atomic rename still keeps the cache consistent
            pass
        return self

    def __exit__(self, *exc):
        self.fh.close()
