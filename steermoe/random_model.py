"""Config-only base models: real architectures and shapes with seeded random weights, built on the device.

``model.source: random:<shape>`` (a known shape name, see :data:`KNOWN_SHAPES`, or a ``config.json`` path) plus
``model.init_seed`` names a base model that has no weights on disk. :func:`ensure_random_model` writes a small
folder (``config.json``, a tokenizer covering the whole vocabulary with a ChatML template,
``generation_config.json`` and :data:`MARKER`) that every stage passes around like any model folder;
:func:`build_random_model` (reached through :func:`steermoe.modeling.load_model`) allocates the model directly on
the target device and fills every parameter from a counter-based hash of (seed, parameter name, element index).

Why a hash and not ``torch.manual_seed`` + ``normal_``: the values depend on nothing but the seed, the name and the
position, never on initialisation order, the RNG's device or the transformers version, and the hash uses only
integer ops whose results are exact on every device. So the routing process, each DeepSpeed fine-tuning process and
evaluation rebuild the same bits, on CPU or GPU, and the fingerprint (config + seed + init version) is the identity
of the weights: a patch made on one refuses a base of any other seed or shape. A 61 GB Qwen3-30B-A3B shape builds in
seconds on an H200 and its fingerprint costs no read of the weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from steermoe.errors import InputError

__all__ = [
    "PREFIX",
    "MARKER",
    "INIT_VERSION",
    "KNOWN_SHAPES",
    "is_random_source",
    "is_random_folder",
    "random_spec",
    "random_fingerprint",
    "random_shape",
    "ensure_random_model",
    "build_random_model",
    "fill_random_",
]

PREFIX = "random:"
MARKER = "steermoe_random.json"
FORMAT = "steermoe-random-model/1"
# Bump when the weights a spec produces change (the fingerprint includes it).
INIT_VERSION = "hash-uniform/1"
TOKENIZER_VERSION = "bpe-demo-corpus/2"  # the demo prompt texts it is learnt from changed (issue 18)

_QWEN3_30B_A3B = {
    "model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48, "num_experts": 128, "num_experts_per_tok": 8,
    "moe_intermediate_size": 768, "intermediate_size": 6144, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 4096, "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
    "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "initializer_range": 0.02,
}
# Known shapes: the public configs' architecture keys (no weights). Tiny ones are for CPU tests and smoke runs.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-30b-a3b": _QWEN3_30B_A3B,
    "olmoe-1b-7b": {
        "model_type": "olmoe", "hidden_size": 2048, "num_hidden_layers": 16, "num_experts": 64, "num_experts_per_tok": 8,
        "intermediate_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 50304,
        "max_position_embeddings": 4096, "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 1e4, "initializer_range": 0.02,
    },
    "mixtral-8x7b": {
        "model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "num_local_experts": 8, "num_experts_per_tok": 2,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 4096, "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 1e6, "initializer_range": 0.02,
    },
    "tiny-qwen3-moe": dict(
        _QWEN3_30B_A3B, hidden_size=64, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=1024, max_position_embeddings=512,
    ),
}
_BPE_VOCAB = 4096  # learned tokens; the rest of the model's vocabulary is filled with tokens no text encodes to
_CHUNK = 1 << 24  # elements hashed at once (int64 temporaries: ~128 MiB each)


# ---------------------------------------------------------------- specs and fingerprints


def is_random_source(source: str) -> bool:
    return str(source).startswith(PREFIX)


def is_random_folder(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def _shape_config(shape: str) -> dict:
    if shape in KNOWN_SHAPES:
        return dict(KNOWN_SHAPES[shape])
    path = Path(shape).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InputError(
            f"model.source: random:{shape}: neither a known shape ({', '.join(sorted(KNOWN_SHAPES))}) nor a config.json file"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"model.source: {path}: not a JSON config ({e})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise InputError(f"model.source: {path}: a Hugging Face config.json needs a 'model_type' key")
    return data


# Keys of a config.json that say nothing about the weights.
_NOT_SHAPE = {"architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "auto_map", "bos_token_id", "eos_token_id", "pad_token_id"}


def random_spec(model_cfg) -> dict:
    """What decides a random base: the architecture config (shape + ``model.config_overrides``) and the seed."""
    source = str(model_cfg.source)
    if not is_random_source(source):
        raise InputError(f"model.source: {source!r} is not a random: source")
    shape = source[len(PREFIX) :].strip()
    if not shape:
        raise InputError(f"model.source: give a shape after 'random:' ({', '.join(sorted(KNOWN_SHAPES))}) or a config.json path")
    config = {k: v for k, v in _shape_config(shape).items() if k not in _NOT_SHAPE}
    config.update(getattr(model_cfg, "config_overrides", None) or {})
    return {"config": config, "seed": int(getattr(model_cfg, "init_seed", 0)), "init": INIT_VERSION}


def random_fingerprint(spec: dict) -> str:
    """Identity of the weights a spec builds: config + seed + init version (no weights read)."""
    text = json.dumps({k: spec[k] for k in ("config", "seed", "init")}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hf_config(spec: dict, source: str):
    from transformers import AutoConfig

    config_dict = spec["config"]
    try:
        return AutoConfig.for_model(config_dict["model_type"], **{k: v for k, v in config_dict.items() if k != "model_type"})
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"model.source: {source}: not a config transformers can build ({str(e).splitlines()[0]})") from None


def random_shape(model_cfg):
    """The routed-expert layout of a random source (:class:`steermoe.preflight.ModelShape`), before anything is built."""
    from steermoe.preflight import shape_of_config

    return shape_of_config(_hf_config(random_spec(model_cfg), str(model_cfg.source)))


# ---------------------------------------------------------------- the folder


def ensure_random_model(model_cfg, cache_dir: str | Path | None = None) -> Path:
    """The folder of a random base (config, tokenizer, marker; no weights), written once per fingerprint."""
    from steermoe.config import default_cache_dir

    spec = random_spec(model_cfg)
    fingerprint = random_fingerprint(spec)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = root / "random-models" / fingerprint
    if is_random_folder(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{fingerprint}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_folder(tmp, spec, fingerprint, str(model_cfg.source))
        if out.exists():  # a half-written folder from a killed run (no marker)
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_folder(out: Path, spec: dict, fingerprint: str, source: str) -> None:
    from transformers import GenerationConfig

    config = _hf_config(spec, source)
    tokenizer, ids = _tokenizer(int(spec["config"].get("vocab_size", 0)))
    tokenizer.save_pretrained(str(out))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, ids["eos"], ids["pad"]
    config.save_pretrained(str(out))
    GenerationConfig(eos_token_id=ids["eos"], pad_token_id=ids["pad"], bos_token_id=None).save_pretrained(str(out))
    marker = {"format": FORMAT, "source": source, "fingerprint": fingerprint, "tokenizer": TOKENIZER_VERSION, **spec}
    (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True), encoding="utf-8")


def _tokenizer_texts() -> list[str]:
    from steermoe.demo import load_demo_prompts
    from steermoe.demo.declines import DECLINE_CLOSERS, DECLINE_OPENERS
    from steermoe.finetune.data import DEFAULT_REFUSALS
    from steermoe.prompt_padding import CONTEXT_SENTENCES

    prompts = sorted(load_demo_prompts()["prompt"].tolist())
    return prompts + [*CONTEXT_SENTENCES, *DECLINE_OPENERS, *DECLINE_CLOSERS, *DEFAULT_REFUSALS]


@functools.lru_cache(maxsize=4)
def _learned_bpe(size: int) -> str:
    from steermoe.demo.tokenizer import train_tokenizer

    return train_tokenizer(_tokenizer_texts(), size).to_str()


def _tokenizer(vocab_size: int):
    """A byte-level BPE learned on the demo prompts (any text encodes), its vocabulary filled up to the model's with
    tokens no text encodes to (they decode to ``' w<id>'``), and the ChatML template. Returns it and its special ids."""
    from tokenizers import Tokenizer

    from steermoe.demo.tokenizer import IM_END, PAD, wrap_tokenizer

    learned = min(_BPE_VOCAB, vocab_size)
    if learned < 300:
        raise InputError(f"model.source: vocab_size {vocab_size} is too small for a byte-level tokenizer; use at least 300")
    data = json.loads(_learned_bpe(learned))
    table = data["model"]["vocab"]
    for i in range(len(table), vocab_size):
        table[f"\u0120w{i}"] = i  # \u0120: the byte-level alphabet's space
    tok = Tokenizer.from_str(json.dumps(data))
    return wrap_tokenizer(tok, max_length=1 << 20), {"eos": tok.token_to_id(IM_END), "pad": tok.token_to_id(PAD)}


# ---------------------------------------------------------------- the weights


def build_random_model(path: str | Path, dtype: str = "float32", device: str = "cpu", **load_kwargs):
    """The model of a random folder, allocated on ``device`` and filled from its seed (see the module docstring)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    if random_fingerprint(marker) != marker.get("fingerprint"):
        raise InputError(f"{path / MARKER}: fingerprint does not match its config and seed; delete {path} to rebuild it")
    config = AutoConfig.from_pretrained(str(path))
    torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, **load_kwargs)
    fill_random_(model, marker["seed"], float(getattr(config, "initializer_range", 0.02) or 0.02))
    model.config._name_or_path = str(path)
    model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model.eval()


def _key(seed: int, name: str) -> tuple[int, int]:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def _hash_uniform_(param, seed: int, name: str, bound: float) -> None:
    """Fill ``param`` with values uniform in [-bound, bound) from hash(seed, name, element index)."""
    import torch

    from steermoe.hashing import index_hash

    k1, k2 = _key(seed, name)
    flat = param.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        stop = min(start + _CHUNK, flat.numel())
        h = index_hash(start, stop, k1, k2, flat.device)
        # Top 24 bits -> [0, 1) exactly in float32; then an affine map, each op correctly rounded everywhere.
        u = (h >> 8).to(torch.float32).mul_(1.0 / (1 << 24))
        flat[start:stop] = u.sub_(0.5).mul_(2.0 * bound).to(flat.dtype)


def _is_norm(module) -> bool:
    return "norm" in type(module).__name__.lower()


def fill_random_(model, seed: int, std: float = 0.02):
    """Seeded weights in place: norms 1, biases 0, every other parameter uniform with standard deviation ``std``."""
    import torch

    bound = std * math.sqrt(3.0)
    seen: set[int] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for pname, param in module.named_parameters(recurse=False):
                if id(param) in seen:  # tied weights: filled once, under their first name
                    continue
                seen.add(id(param))
                name = f"{module_name}.{pname}" if module_name else pname
                if pname == "bias" or (_is_norm(module) and pname != "weight"):
                    param.zero_()
                elif _is_norm(module):
                    param.fill_(1.0)
                else:
                    _hash_uniform_(param, seed, name, bound)
    return model
