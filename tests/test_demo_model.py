"""The demo model builder: a standard HF folder, a working chat template, determinism, the cache."""

import json

import pytest

from steermoe.demo.corpus import render_user_turn
from steermoe.demo.model import build_demo_model, demo_model_dir, ensure_demo_model
from steermoe.demo.recipe import DemoRecipe
from steermoe.errors import InputError


def test_folder_is_standard_and_round_trips(tiny_demo_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tiny_demo_model / name).exists(), name
    config = json.loads((tiny_demo_model / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and config["architectures"] == ["Qwen3MoeForCausalLM"]
    # transformers 5 writes num_experts as num_local_experts; AutoConfig (and vLLM through it) maps it back
    assert config["num_hidden_layers"] >= 4 and config["num_local_experts"] >= 8 and config["num_experts_per_tok"] == 2

    model = AutoModelForCausalLM.from_pretrained(tiny_demo_model)
    assert model.config.num_experts >= 8
    tok = AutoTokenizer.from_pretrained(tiny_demo_model)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|im_start|>") != tok.unk_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "How do I water a fern?"}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    assert text == render_user_turn("How do I water a fern?")  # the format the model was trained on
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    assert tok.decode(ids["input_ids"][0]) == text
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_chat_template_renders_history_and_system(tiny_demo_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_demo_model)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")


def test_trained_and_meta_written(tiny_demo_model):
    meta = json.loads((tiny_demo_model / "steermoe_demo.json").read_text())
    assert meta["recipe"] == DemoRecipe.tiny().to_dict()
    assert len(meta["designed_unsafe_experts"]) == 4
    import math

    assert meta["final_train_loss"] < math.log(meta["recipe"]["vocab_size"])  # learned something beyond uniform


def test_build_is_deterministic(tiny_demo_model, tmp_path):
    again = build_demo_model(tmp_path / "again", DemoRecipe.tiny(), progress=False)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_demo_model / name).read_bytes(), name


def test_refuses_to_overwrite_and_unknown_arch(tiny_demo_model, tmp_path):
    with pytest.raises(InputError, match="already holds a model"):
        build_demo_model(tiny_demo_model, DemoRecipe.tiny())
    with pytest.raises(InputError, match="unknown demo architecture"):
        ensure_demo_model(tmp_path, arch="llama")


def test_ensure_caches_by_recipe_hash(tmp_path):
    recipe = DemoRecipe.tiny()
    path = ensure_demo_model(tmp_path, recipe=recipe, progress=False)
    assert path == demo_model_dir(tmp_path, recipe)
    assert path.parent == tmp_path / "demo-models" and path.name.startswith("qwen3_moe-")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".") and p.is_dir()]  # temp folder gone
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_model(tmp_path, recipe=recipe) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # found, not built again
    assert demo_model_dir(tmp_path, DemoRecipe.tiny(arch="olmoe")) != path
