"""The config-only model source (``random:``) at tiny size: real folders, real transformers models, real processes."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from steermoe.config import ModelConfig, load_config
from steermoe.errors import ConfigError, InputError
from steermoe.modeling import load_model, load_tokenizer, model_fingerprint, resolve_model_path
from steermoe.random_model import KNOWN_SHAPES, MARKER, random_fingerprint, random_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = "random:tiny-qwen3-moe"

# Builds the models of (folder, dtype) pairs in a fresh interpreter and prints a digest of every parameter's bytes.
_DIGESTS = """
import sys
from steermoe.modeling import load_model
from tests.test_random_model import digest
for path, dtype in zip(sys.argv[1::2], sys.argv[2::2]):
    print(digest(load_model(path, dtype=dtype, device="cpu")))
"""


def digest(model) -> str:
    import torch

    d = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        d.update(name.encode())
        d.update(p.detach().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return d.hexdigest()


def digests_in_subprocess(*pairs: tuple[Path, str]) -> list[str]:
    args = [str(x) for pair in pairs for x in pair]
    out = subprocess.run([sys.executable, "-c", _DIGESTS, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return out.stdout.strip().splitlines()[-len(pairs) :]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("random-cache")


@pytest.fixture(scope="module")
def folders(cache):
    """Seed 0 and seed 1 of the tiny shape."""
    return {seed: resolve_model_path(ModelConfig(source=TINY, init_seed=seed), cache) for seed in (0, 1)}


def test_the_folder_holds_config_tokenizer_and_marker_but_no_weights(folders):
    path = folders[0]
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "tokenizer.json", "generation_config.json", MARKER} <= names
    assert not list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == KNOWN_SHAPES["tiny-qwen3-moe"]["num_hidden_layers"]


def test_tokenizer_covers_the_vocabulary_and_renders_chat(folders, cache):
    tok = load_tokenizer(folders[0])
    config = json.loads((folders[0] / "config.json").read_text())
    assert len(tok) == config["vocab_size"]
    text = tok.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert config["eos_token_id"] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    # A vocabulary larger than the learned BPE: every id decodes, the filler ids to ' w<id>'.
    big = resolve_model_path(ModelConfig(source=TINY, init_seed=0, config_overrides={"vocab_size": 5000}), cache)
    tok_big = load_tokenizer(big)
    assert len(tok_big) == 5000 and tok_big.decode([4999]) == " w4999"
    ids = tok_big("Explain photosynthesis, then café prices.")["input_ids"]
    assert tok_big.decode(ids) == "Explain photosynthesis, then café prices." and max(ids) < 4096  # text never hits a filler


def test_rebuild_is_bit_identical_across_processes(folders):
    model = load_model(folders[0], dtype="float32", device="cpu")
    here = [digest(model), digest(load_model(folders[0], dtype="bfloat16", device="cpu"))]
    there = digests_in_subprocess((folders[0], "float32"), (folders[0], "bfloat16"), (folders[1], "float32"))
    assert there[:2] == here
    assert there[2] != here[0]  # another seed, other weights
    w = model.model.layers[0].mlp.experts.gate_up_proj
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    assert bool((model.model.norm.weight == 1).all())


def test_fingerprint_is_config_plus_seed_and_reused(folders, cache):
    spec = random_spec(ModelConfig(source=TINY, init_seed=0))
    assert model_fingerprint(folders[0]) == random_fingerprint(spec) == folders[0].name
    assert model_fingerprint(folders[1]) != model_fingerprint(folders[0])
    marker = folders[0] / MARKER
    before = marker.stat().st_mtime_ns
    again = resolve_model_path(ModelConfig(source=TINY, init_seed=0), cache)
    assert again == folders[0] and marker.stat().st_mtime_ns == before  # found, not rebuilt
    deeper = ModelConfig(source=TINY, init_seed=0, config_overrides={"num_hidden_layers": 3})
    assert random_fingerprint(random_spec(deeper)) != folders[0].name


def test_a_config_json_path_is_a_source_too(folders, tmp_path, cache):
    shape = dict(KNOWN_SHAPES["tiny-qwen3-moe"], architectures=["Qwen3MoeForCausalLM"], transformers_version="0")
    (tmp_path / "config.json").write_text(json.dumps(shape))
    path = resolve_model_path(ModelConfig(source=f"random:{tmp_path / 'config.json'}", init_seed=0), cache)
    assert path == folders[0]  # same architecture keys and seed: the same base


def test_patch_refuses_a_base_of_another_seed(folders, tmp_path):
    from steermoe.finetune import load_patched_model
    from steermoe.finetune.experts import prepare_selective
    from steermoe.finetune.patch import save_patch
    from steermoe.selection import ExpertSelection

    selection = ExpertSelection([(0, 1), (1, 3)], [0.5, 0.4], "threshold", {})
    model = load_model(folders[0], dtype="float32", device="cpu")
    plan = prepare_selective(model, selection)
    for s in plan.slices:
        s.module.rows.data.add_(1.0)  # "trained"
    patch = save_patch(tmp_path / "patch", plan, model_fingerprint(folders[0]), selection)
    patched = load_patched_model(folders[0], patch, dtype="float32", device="cpu")
    rows = patched.model.layers[0].mlp.experts.gate_up_proj
    base = load_model(folders[0], dtype="float32", device="cpu").model.layers[0].mlp.experts.gate_up_proj
    assert bool((rows[1] == base[1] + 1.0).all()) and bool((rows[0] == base[0]).all())
    with pytest.raises(InputError, match="patch was made for base model"):
        load_patched_model(folders[1], patch, dtype="float32", device="cpu")


def test_bad_random_sources_fail_with_one_line(tmp_path, cache):
    with pytest.raises(InputError, match="neither a known shape"):
        resolve_model_path(ModelConfig(source="random:no-such-shape"), cache)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not a JSON config"):
        resolve_model_path(ModelConfig(source=f"random:{tmp_path / 'config.json'}"), cache)
    with pytest.raises(ConfigError, match="config_overrides applies to 'random:' sources only"):
        load_config(None, ["model.config_overrides={num_hidden_layers: 2}"])
    with pytest.raises(ConfigError, match="selection.top_k: 999 exceeds"):
        load_config(None, [f"model.source={TINY}", "selection.top_k=999"])
    assert not list((cache / "random-models").glob(".*tmp*"))  # nothing half-written left behind


def test_padded_prompts_are_exactly_the_asked_length(folders):
    from steermoe.modeling import render_chat
    from steermoe.prompt_padding import padded_prompt_set

    tok = load_tokenizer(folders[0])
    frame = padded_prompt_set(tok, tokens=40, train=24, eval=8)
    assert len(frame) == 32 and frame["id"].is_unique
    assert frame.groupby("split").size().to_dict() == {"eval": 8, "train": 24}
    assert set(frame["label"]) == {"safe", "unsafe"}
    lengths = {len(tok(render_chat(tok, [{"role": "user", "content": p}], {}), add_special_tokens=False)["input_ids"]) for p in frame["prompt"]}
    assert lengths == {40}
    with pytest.raises(InputError, match="fits in 10 tokens"):
        padded_prompt_set(tok, tokens=10, train=2, eval=0)


def test_device_digest_sees_any_changed_word_and_is_stable():
    import torch

    from steermoe.hashing import device_digest

    t = torch.arange(1000, dtype=torch.float32).reshape(10, 100) / 7
    assert device_digest(t) == device_digest(t.clone())
    changed = t.clone()
    changed[3, 17] = torch.nextafter(changed[3, 17], torch.tensor(1e9))
    swapped = t.clone()
    swapped[[0, 1]] = t[[1, 0]]
    digests = {device_digest(x) for x in (t, changed, swapped, t.to(torch.bfloat16), t.reshape(100, 10))}
    assert len(digests) == 5


def test_evaluation_holds_one_model_at_a_time(folders, tmp_path):
    import gc
    import weakref

    from steermoe.evaluation import ModelEntry, compare_models
    from tests.conftest import make_prompts

    alive: list = []

    def entry():
        def load():
            gc.collect()
            assert not [r for r in alive if r() is not None], "a previous entry's model is still in memory"
            model = load_model(folders[0], dtype="float32", device="cpu")
            alive.append(weakref.ref(model))
            return model, load_tokenizer(folders[0])

        return ModelEntry(load, engine="static")

    import pandas as pd

    from steermoe.evaluation.benchmark_scores import ScoreOptions
    from steermoe.generation import GenerationSettings

    prompts = pd.DataFrame(make_prompts(n_safe=4, n_unsafe=4))
    result = compare_models({"base": entry(), "other": entry(), "third": entry()}, prompts, ["string_match"], tmp_path,
                            generation=GenerationSettings(max_new_tokens=3), scoring=ScoreOptions(samples=5), drift=False, progress=False)
    assert set(result.results) == {"base", "other", "third"} and len(alive) == 3
