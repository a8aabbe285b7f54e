"""The one door for models: sources, and every setting of the model section reaching the load."""

import json
import shutil

import pytest

from steermoe.config import ModelConfig
from steermoe.errors import InputError
from steermoe.modeling import MODEL_SOURCES, load_pretrained, register_model_source, resolve_model_path

CUSTOM_CODE = '''
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM


class CustomMoeConfig(Qwen3MoeConfig):
    model_type = "steermoe_custom_moe"


class CustomMoeForCausalLM(Qwen3MoeForCausalLM):
    config_class = CustomMoeConfig
'''


@pytest.fixture(scope="module")
def custom_code_model(tiny_demo_model, tmp_path_factory):
    """The tiny model as a folder whose architecture exists only in its own code (auto_map)."""
    path = tmp_path_factory.mktemp("custom") / "model"
    shutil.copytree(tiny_demo_model, path)
    (path / "custom_moe.py").write_text(CUSTOM_CODE)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="steermoe_custom_moe", architectures=["CustomMoeForCausalLM"],
                  auto_map={"AutoConfig": "custom_moe.CustomMoeConfig", "AutoModelForCausalLM": "custom_moe.CustomMoeForCausalLM"})
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_trust_remote_code_reaches_the_load(custom_code_model):
    with pytest.raises(InputError, match="trust_remote_code"):
        load_pretrained(ModelConfig(device="cpu"), custom_code_model, tokenizer=False)
    model, tokenizer = load_pretrained(ModelConfig(device="cpu", trust_remote_code=True), custom_code_model)
    assert type(model).__name__ == "CustomMoeForCausalLM" and tokenizer.padding_side == "left"


def test_dtype_and_attention_kernel_reach_the_load(tiny_demo_model):
    model = load_pretrained(ModelConfig(device="cpu", dtype="bfloat16", attn_implementation="eager"), tiny_demo_model, tokenizer=False).model
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.bfloat16"
    assert load_pretrained(ModelConfig(), tiny_demo_model, weights=False).model is None


def test_a_registered_source_resolves_through_the_same_door(tiny_demo_model, tmp_path):
    seen = []

    def resolve(model_cfg, argument, cache_dir):
        seen.append((argument, cache_dir))
        return tiny_demo_model

    register_model_source("copy-of", resolve, "test source")
    try:
        assert resolve_model_path(ModelConfig(source="copy-of:tiny"), tmp_path) == tiny_demo_model
        assert seen == [("tiny", tmp_path)]
        with pytest.raises(ValueError, match="already registered"):
            register_model_source("copy-of", resolve, "again")
    finally:
        del MODEL_SOURCES["copy-of"]


def test_a_missing_folder_names_the_known_sources(tmp_path):
    with pytest.raises(InputError, match="'demo'"):
        resolve_model_path(ModelConfig(source=str(tmp_path / "nope")))


def test_the_fingerprint_is_hashed_once_and_rehashed_when_a_weight_file_changes(tiny_demo_model, tmp_path, monkeypatch):
    import hashlib
    import os

    from steermoe import modeling

    monkeypatch.setenv("STEERMOE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(tiny_demo_model, folder)
    weights = sorted(folder.glob("*.safetensors"))
    expected = hashlib.sha256(json.dumps(json.loads((folder / "config.json").read_text()), sort_keys=True).encode())
    for w in weights:
        expected.update(w.name.encode() + w.read_bytes())
    hashed = []
    real = modeling._hash_model_files
    monkeypatch.setattr(modeling, "_hash_model_files", lambda *a: hashed.append(1) or real(*a))

    first = modeling.model_fingerprint(folder)
    assert first == expected.hexdigest()[:16] and modeling.model_fingerprint(folder) == first and len(hashed) == 1
    os.utime(weights[0], ns=(weights[0].stat().st_atime_ns, weights[0].stat().st_mtime_ns + 10**9))
    assert modeling.model_fingerprint(folder) == first and len(hashed) == 2  # touched: hashed again, same bytes
    data = bytearray(weights[0].read_bytes())
    data[-1] ^= 1
    weights[0].write_bytes(bytes(data))
    assert modeling.model_fingerprint(folder) != first and len(hashed) == 3
