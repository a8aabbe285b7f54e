from pathlib import Path

import pytest

from steermoe.config import RunConfig, load_config
from steermoe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg.model.source == "demo"
    assert cfg.prompts.sources == "demo"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), RunConfig)


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text,expected",
    [
        ("finetune:\n  learning_rate: -0.1\n", "finetune.learning_rate: Input should be greater than 0"),
        ("finetune:\n  lerning_rate: 0.1\n", "finetune.lerning_rate: unknown key"),
        ("generation:\n  max_new_tokens: lots\n", "generation.max_new_tokens: Input should be a valid integer"),
        ("selection:\n  top_k: 100000\n", "selection.top_k: 100000 exceeds the model's"),
        ("finetune:\n  zero_stage: 4\n", "finetune.zero_stage"),
        ("model: [1, 2]\n", "model: Input should be a valid dictionary"),
        ("routing: {backend: tensorrt}\n", "routing.backend"),
    ],
)
def test_rejections_name_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "finetune:\n  learning_rate: 0.01\n"), ["finetune.learning_rate=3e-4", "evaluation.judges=[string_match, embedding]"])
    assert cfg.finetune.learning_rate == pytest.approx(3e-4)
    assert cfg.evaluation.judges == ["string_match", "embedding"]
    with pytest.raises(ConfigError, match="finetune.batch_size: Input should be greater than or equal to 1"):
        load_config(None, ["finetune.batch_size=0"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: {source: [\n"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
