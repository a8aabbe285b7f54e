"""The shipped demo model: the default recipe's build, copied into the cache instead of training it."""

import json

import pytest

from steermoe.demo.model import demo_model_dir, ensure_demo_model
from steermoe.demo.recipe import DemoRecipe
from steermoe.demo.shipped import CHECKSUMS, SHIPPED_DIR, file_digests, install_shipped, shipped_model, write_shipped
from steermoe.errors import InputError


@pytest.fixture(scope="module")
def default_name():
    return demo_model_dir(None, DemoRecipe()).name  # hashes the corpus the default recipe trains on


def test_the_package_ships_the_default_recipes_build(default_name):
    shipped = [p.name for p in SHIPPED_DIR.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert shipped == [default_name], (
        f"the shipped demo model {shipped} is not the current recipe's ({default_name}): after changing the demo "
        "tables or recipe, run `python -m steermoe.demo.shipped refresh`"
    )
    folder = shipped_model(default_name)
    meta = json.loads((folder / "steermoe_demo.json").read_text())
    assert f"{meta['recipe']['arch']}-{meta['recipe_hash']}" == default_name
    assert meta["recipe"] == DemoRecipe().to_dict()
    listed = {name: digest for digest, name in (line.split("  ") for line in (folder / CHECKSUMS).read_text().splitlines())}
    actual = file_digests(folder)
    assert listed == {name: actual[name] for name in listed}
    assert {"model.safetensors", "tokenizer.json", "config.json", "steermoe_demo.json"} <= set(listed)


def test_first_use_copies_the_shipped_model_instead_of_training(tmp_path, default_name, capsys):
    path = ensure_demo_model(tmp_path)  # training it would take minutes and write other training seconds
    assert path == tmp_path / "demo-models" / default_name
    shipped = shipped_model(default_name)
    for name in ("model.safetensors", "tokenizer.json", "steermoe_demo.json"):
        assert (path / name).read_bytes() == (shipped / name).read_bytes(), name
    assert not (path / CHECKSUMS).exists() and not (path / "build.json").exists()  # the package's files, not the model's
    assert "package's build" in capsys.readouterr().err
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [default_name]

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(path).config.num_experts == DemoRecipe().num_experts


def test_a_damaged_shipped_model_is_refused_and_nothing_is_left(tmp_path, tiny_demo_model):
    root = tmp_path / "shipped"
    folder = write_shipped(tiny_demo_model, root)
    assert shipped_model(tiny_demo_model.name, root) == folder
    cache = tmp_path / "cache"
    cache.mkdir()
    install_shipped(folder, cache / "ok")
    assert file_digests(cache / "ok") == {k: v for k, v in file_digests(tiny_demo_model).items()}

    data = bytearray((folder / "tokenizer.json").read_bytes())
    data[-2] ^= 1
    (folder / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"tokenizer.json: sha256 .* the shipped demo model is damaged; reinstall steermoe"):
        install_shipped(folder, cache / "bad")
    (folder / "config.json").unlink()
    with pytest.raises(InputError, match="config.json: missing from the shipped demo model"):
        install_shipped(folder, cache / "bad")
    assert sorted(p.name for p in cache.iterdir()) == ["ok"]  # no half-copied folder


def test_writing_a_new_shipped_model_replaces_the_old_one(tmp_path, tiny_demo_model):
    root = tmp_path / "shipped"
    stale = root / "qwen3_moe-000000000000"
    stale.mkdir(parents=True)
    (stale / CHECKSUMS).write_text("")
    write_shipped(tiny_demo_model, root, build_seconds=1.25)
    assert sorted(p.name for p in root.iterdir()) == [tiny_demo_model.name]
    info = json.loads((root / tiny_demo_model.name / "build.json").read_text())
    assert info["build_seconds"] == round(1.25, 1)
    assert info["cores"] >= 1 and info["torch"]
    with pytest.raises(InputError, match="no model.safetensors"):
        write_shipped(tmp_path, root)


def test_only_the_full_default_recipe_is_shipped(tmp_path):
    for recipe in (DemoRecipe.tiny(), DemoRecipe.small(), DemoRecipe().with_arch("olmoe")):
        assert shipped_model(demo_model_dir(tmp_path, recipe).name) is None  # these are trained on first use
