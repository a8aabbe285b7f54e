"""The stage specs drive tasks, keys and docs; the cache-key test covers every stage through them."""

import json
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel

from steermoe import code_version as cv
from steermoe.config import PromptSourceConfig, load_config
from steermoe.stage_specs import STAGE_SPECS, STAGES, stage_table
from tasks.caching import stage_key
from tests.conftest import make_prompts

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = {"prompts": {"key": "prompts:abc"}, "model": {"key": "model:def"}, "routing": {"key": "r"}, "risk": {"key": "k"},
            "selection": {"key": "s"}, "finetune": {"key": "f"}, "evaluation": {"key": "e"}}


def leaves(model: BaseModel, prefix: str = ""):
    """Every settable config key, dotted (sections are walked into)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def changed(value, tmp_path):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, Path):
        return tmp_path / "elsewhere"
    if isinstance(value, list):
        return [*value, value[0]] if value else ["extra"]
    if isinstance(value, dict):
        return {**value, "extra": 1}
    return "eager" if value is None else f"{value}-changed"


def with_value(config: BaseModel, dotted: str, value) -> BaseModel:
    head, _, rest = dotted.partition(".")
    if rest:
        return config.model_copy(update={head: with_value(getattr(config, head), rest, value)})
    return config.model_copy(update={head: value})  # unvalidated on purpose: keys only, nothing runs


def key_of(stage: str, config) -> str:
    spec = STAGE_SPECS[stage]
    return stage_key(stage, {"config": config, **{k: v for k, v in UPSTREAM.items() if k in spec.inputs}, "out_root": "x"})


def under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@pytest.fixture
def base_config(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_config(None, [f"cache_dir={tmp_path / 'cache'}"])


def test_changing_a_config_key_changes_exactly_the_stages_that_read_it(base_config, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in make_prompts()))
    replacement = {"prompts.sources": [PromptSourceConfig(path=str(prompts))]}
    before = {stage: key_of(stage, base_config) for stage in STAGES}
    for key in leaves(base_config):
        value = replacement.get(key, changed(getattr_dotted(base_config, key), tmp_path))
        config = with_value(base_config, key, value)
        for stage, spec in STAGE_SPECS.items():
            read = under(key, spec.reads + spec.identity_reads)
            assert (key_of(stage, config) != before[stage]) == read, f"{stage}: {key} is {'read' if read else 'not read'}"


def getattr_dotted(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("stage", STAGES)
def test_changing_any_module_a_stage_reaches_changes_its_key_and_no_other_module_does(stage, base_config, monkeypatch):
    spec = STAGE_SPECS[stage]
    reached = {path.resolve() for path in spec.reached_modules().values()}
    everything = sorted((ROOT / "steermoe").rglob("*.py"))
    before = key_of(stage, base_config)
    real = cv._source_bytes
    for path in everything:
        monkeypatch.setattr(cv, "_source_bytes", lambda p, edited=path: real(p) + (b"\n# edited\n" if p == edited else b""))
        assert (key_of(stage, base_config) != before) == (path.resolve() in reached), f"{stage}: {path.relative_to(ROOT)}"


def test_stages_reach_the_modules_the_hand_lists_missed():
    reached = {name: set(spec.reached_modules()) for name, spec in STAGE_SPECS.items()}
    assert "steermoe.plots" in reached["risk_difference"]
    assert "steermoe.registry" in reached["select_experts"]
    assert {"steermoe.finetune.patch", "steermoe.selection"} <= reached["finetune"]
    assert "steermoe.prompts" in reached["evaluate"]
    # Computed, not everything: choosing experts runs no training or routing code.
    assert not any(m.startswith(("steermoe.finetune", "steermoe.routing")) for m in reached["select_experts"])


def helper_importing_selection():
    from steermoe import selection  # noqa: F401


def function_using_a_helper():
    return helper_importing_selection()


def test_the_walk_follows_same_module_helpers_and_their_imports():
    assert {"steermoe.selection", "steermoe.registry"} <= set(cv.reached_modules(function_using_a_helper))


def test_every_stage_has_one_task_named_and_retried_as_its_spec_says():
    from tasks.stages import STAGE_TASKS

    assert list(STAGE_TASKS) == list(STAGES)
    for name, task in STAGE_TASKS.items():
        assert task.name == STAGE_SPECS[name].task_name and task.retries == STAGE_SPECS[name].retries


def test_the_readme_stage_table_is_the_generated_one():
    assert stage_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_finetune_keys_the_generation_batch_size_it_uses_for_base_answers(base_config):
    assert key_of("finetune", base_config) != key_of("finetune", load_config(None, [f"cache_dir={base_config.cache_dir}", "generation.batch_size=3"]))


def test_an_unknown_stage_lists_the_known_ones():
    from steermoe.errors import InputError
    from steermoe.stage_specs import spec

    with pytest.raises(InputError, match="validate_prompts, prepare_model"):
        spec("colect_routing")


def test_an_edited_demo_table_changes_the_demo_model_key(base_config, tmp_path, monkeypatch):
    """The demo model is built from the YAML tables beside the prompt sets: editing one (new vocabulary) must
    miss the cached model stage, as editing its code does."""
    from steermoe.demo import data_files

    assert base_config.model.source == "demo"
    before = key_of("prepare_model", base_config)
    copy = tmp_path / "data"
    shutil.copytree(data_files.DATA_DIR, copy)
    monkeypatch.setattr(data_files, "DATA_DIR", copy)
    assert key_of("prepare_model", base_config) == before  # the same tables, the same key
    wording = copy / "wording.yaml"
    wording.write_text(wording.read_text().replace("frames:\n", 'frames:\n  - "Got a minute to explain how to {item}?"\n', 1))
    assert key_of("prepare_model", base_config) != before
