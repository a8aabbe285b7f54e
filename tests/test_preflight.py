"""Checks before any model loads: paths, and model-dependent settings read from config.json alone."""

import json
import shutil
import time

import pytest

from steermoe.config import load_config
from steermoe.errors import ConfigError, InputError
from steermoe.preflight import check_selection, model_shape


@pytest.fixture
def config_only(tiny_demo_model, tmp_path):
    """The tiny model's folder with its config.json and nothing else: no weights to load."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(tiny_demo_model / "config.json", folder / "config.json")
    return folder


def test_routing_regulariser_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match="routing_regulariser is not implemented"):
        load_config(None, ["finetune.routing_regulariser=0.1"])
    assert "routing_regulariser" not in load_config(None, ["finetune.routing_regulariser=0"]).finetune.model_dump()


def test_top_k_is_checked_against_any_models_config_json_without_its_weights(config_only):
    from steermoe.config import ModelConfig

    shape = model_shape(ModelConfig(source=str(config_only)))
    assert shape.num_experts > 1 and shape.moe_layers
    load_config(None, [f"model.source={config_only}", f"selection.top_k={shape.total}"])
    with pytest.raises(ConfigError, match=f"exceeds the model's {shape.total} experts"):
        load_config(None, [f"model.source={config_only}", f"selection.top_k={shape.total + 1}"])
    with pytest.raises(ConfigError, match="per_layer_cap"):
        load_config(None, [f"model.source={config_only}", f"selection.per_layer_cap={shape.num_experts + 1}"])


def test_a_missing_model_folder_fails_at_load(tmp_path):
    with pytest.raises(InputError, match="model.source: .* does not exist"):
        load_config(None, [f"model.source={tmp_path / 'nope'}"])


def test_a_selection_naming_layers_or_experts_the_model_lacks_is_refused(config_only, tmp_path):
    from steermoe.config import ModelConfig

    shape = model_shape(ModelConfig(source=str(config_only)))
    good, bad_layer, bad_expert = tmp_path / "good.json", tmp_path / "layer.json", tmp_path / "expert.json"
    for path, experts in ((good, [[shape.moe_layers[0], 0]]), (bad_layer, [[max(shape.moe_layers) + 5, 0]]), (bad_expert, [[shape.moe_layers[0], shape.num_experts]])):
        path.write_text(json.dumps({"experts": experts, "scores": [0.1], "strategy": "threshold"}))
    assert check_selection(good, shape, "--steer").experts == [(shape.moe_layers[0], 0)]
    with pytest.raises(InputError, match="is not an MoE layer of this model"):
        check_selection(bad_layer, shape, "--steer")
    with pytest.raises(InputError, match="names experts .* outside 0"):
        check_selection(bad_expert, shape, "--steer")
    with pytest.raises(InputError, match="evaluation.steering_selection .*not an MoE layer"):
        load_config(None, [f"model.source={config_only}", f"evaluation.steering_selection={bad_layer}"])


def test_evaluate_with_a_folder_that_is_not_a_patch_fails_before_any_answer(tiny_demo_model, tmp_path, capsys):
    from steermoe.cli import run_app

    not_a_patch = tmp_path / "not-a-patch"
    not_a_patch.mkdir()
    started = time.perf_counter()
    code = run_app(["evaluate", "--set", f"model.source={tiny_demo_model}", "--patch", str(not_a_patch), "--out", str(tmp_path / "ev")])
    assert code == 2 and "--patch: " in capsys.readouterr().err
    assert not (tmp_path / "ev").exists() and time.perf_counter() - started < 30  # nothing answered, nothing written
    assert run_app(["compare", "--set", f"model.source={tiny_demo_model}", "--patch", f"p={not_a_patch}", "--out", str(tmp_path / "cmp")]) == 2
    assert not (tmp_path / "cmp").exists()
