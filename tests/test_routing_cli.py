"""``steermoe collect``: config in, store and summary out; one-line errors."""

import json

import pytest
import yaml

from steermoe.cli import run_app
from steermoe.routing import RoutingStore
from tests.routing_fixtures import make_model, make_prompts, make_tokenizer, one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "model"
    make_model("qwen3_moe").save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    prompts = root / "prompts.jsonl"
    rows = make_prompts(5).drop(columns=["messages"]).to_dict("records")
    rows[4]["split"] = "eval"
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    config = {
        "model": {"source": str(model_dir), "device": "cpu"},
        "prompts": {"sources": [{"path": str(prompts)}]},
        "generation": {"max_new_tokens": 4, "batch_size": 2, "chat_template_kwargs": {}},
        "routing": {"shard_sequences": 3},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path


def test_collect_writes_a_store_and_prints_a_summary(setup, capsys):
    root, config = setup
    assert run_app(["collect", "--config", str(config), "--out", str(root / "store")]) == 0
    out = capsys.readouterr().out
    store = RoutingStore(root / "store")
    assert store.complete and store.manifest["counts"]["sequences"] == 4  # the eval row is left out
    assert set(store.sequences()["split"]) == {"train"}
    assert "tokens/s" in out and "generated tokens" in out and "qwen3_moe" in out
    assert len(store.manifest["model"]["fingerprint"]) == 16


def test_bad_inputs_are_one_line_errors(setup, capsys):
    root, config = setup
    code = run_app(["collect", "--config", str(config), "--set", "prompts.sources=[]", "--out", str(root / "x")])
    assert code == 2 and "no prompt sources" in capsys.readouterr().err
    code = run_app(["collect", "--config", str(config), "--set", "model.source=/nonexistent", "--out", str(root / "y")])
    assert code == 2 and "model.source" in capsys.readouterr().err


def test_demo_prompt_source_is_filtered_by_split():
    from steermoe.cli.routing import load_routing_prompts
    from steermoe.config import RunConfig

    cfg = RunConfig()
    train = load_routing_prompts(cfg)
    assert len(train) > 0 and set(train["split"]) == {"train"} and set(train["label"]) == {"safe", "unsafe"}
    cfg.routing.split = "all"
    assert len(load_routing_prompts(cfg)) > len(train)


def test_backend_setting_picks_the_engine(setup, capsys):
    import numpy as np
    import pandas as pd

    from steermoe.config import load_config
    from steermoe.errors import InputError
    from steermoe.stages import collect_with_backend

    root, config = setup
    assert run_app(["collect", "--config", str(config), "--set", "routing.backend=hf_static", "--out", str(root / "static")]) == 0
    assert "backend hf_static" in capsys.readouterr().out
    static, hf = RoutingStore(root / "static"), RoutingStore(root / "store")
    if not hf.complete:
        assert run_app(["collect", "--config", str(config), "--out", str(root / "store")]) == 0
    assert static.manifest["generation"]["backend"] == "hf_static" and hf.manifest["generation"]["backend"] == "hf"
    for a, b in zip(static.iter_shards(), hf.iter_shards()):
        np.testing.assert_array_equal(a.experts, b.experts)
    cfg = load_config(config, ["routing.backend=vllm"])
    with pytest.raises(InputError, match="no prompts|needs vLLM"):  # dispatched to the vLLM backend, which checks first
        collect_with_backend(cfg, root / "model", pd.DataFrame(columns=["id", "prompt"]), root / "vllm")
