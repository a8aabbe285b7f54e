"""Expert patches: bit-exact round trip, only the trained slices stored, refused on another base."""

import json

import pytest
import torch

from steermoe.errors import InputError
from steermoe.finetune import apply_patch, load_patched_model, read_manifest
from steermoe.finetune.experts import materialize, prepare_selective, trainable_parameters
from steermoe.finetune.patch import save_patch
from steermoe.modeling import load_model, model_fingerprint
from tests.test_finetune_experts import SELECTION, assert_bit_identity, tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A saved base, a patch trained on it (plain torch), and the fine-tuned weights."""
    root = tmp_path_factory.mktemp("patch")
    tiny_model("gpt_oss").save_pretrained(root / "base")  # GPT-OSS: fused tensors and fused biases
    model = load_model(root / "base", device="cpu")
    plan = prepare_selective(model, SELECTION)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        ids = torch.randint(0, 128, (2, 10))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    save_patch(root / "patch", plan, model_fingerprint(root / "base"), SELECTION)
    materialize(model, plan)
    return root, {k: v.clone() for k, v in model.state_dict().items()}


def test_patch_reproduces_finetuned_weights_bit_exactly(trained):
    root, tuned = trained
    patched = load_patched_model(root / "base", root / "patch", device="cpu").state_dict()
    for name, value in tuned.items():
        assert torch.equal(patched[name], value), name
    base = load_model(root / "base", device="cpu").state_dict()
    assert_bit_identity(patched, base, SELECTION)


def test_patch_holds_only_selected_slices(trained):
    root, _ = trained
    manifest = read_manifest(root / "patch")
    assert manifest["arch"] == "gpt_oss" and manifest["base_fingerprint"] == model_fingerprint(root / "base")
    from safetensors.torch import load_file

    tensors = load_file(str(root / "patch" / "experts.safetensors"))
    assert {e["name"] for e in manifest["tensors"]} == set(tensors)
    for entry in manifest["tensors"]:
        assert tensors[entry["name"]].shape[0] == len(entry["experts"])
    assert len(tensors) == 2 * 4  # two layers x (gate_up, gate_up bias, down, down bias)


def test_patch_refused_on_another_base(trained, tmp_path):
    root, _ = trained
    tiny_model("gpt_oss", seed=1).save_pretrained(tmp_path / "other")
    other = load_model(tmp_path / "other", device="cpu")
    expected = read_manifest(root / "patch")["base_fingerprint"]
    actual = model_fingerprint(tmp_path / "other")
    with pytest.raises(InputError) as err:
        apply_patch(other, root / "patch")
    assert expected in str(err.value) and actual in str(err.value)


def test_not_a_patch_folder(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(InputError, match="not an expert patch"):
        read_manifest(tmp_path)
