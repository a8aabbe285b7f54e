"""The run-time bit-identity check: a real tiny model, prepared as fine-tuning prepares it; one flipped bit
anywhere outside the selected experts fails with the tensor's name, while the selected rows may change."""

import pytest
import torch

from steermoe.errors import BitIdentityError
from steermoe.finetune.experts import prepare_selective
from steermoe.finetune.integrity import display_name, frozen_snapshot, tensor_digest, verify_frozen
from steermoe.selection import ExpertSelection
from tests.fixtures.tiny_moe import tiny_model

SELECTION = ExpertSelection([(0, 1), (1, 3), (1, 6)], [0.3, 0.2, 0.1], "manual")
FUSED = "model.layers.1.mlp.experts.gate_up_proj"


def flip_one_bit(t: torch.Tensor, index: tuple) -> None:
    with torch.no_grad():
        bits = t.view(torch.int32)
        bits[index] ^= 1  # the smallest change a float can make


@pytest.fixture
def prepared():
    model = tiny_model("qwen3_moe")
    plan = prepare_selective(model, SELECTION)
    return model, plan, frozen_snapshot(model, plan)


def original(model, layer: int):
    return model.model.layers[layer].mlp.experts.parametrizations.gate_up_proj.original


def test_an_untouched_model_passes_and_reports_what_it_checked(prepared):
    model, _, snap = prepared
    checked = verify_frozen(model, snap)
    # Every frozen tensor, and the 8-3 unselected rows of each of the 4 fused tensors holding selected experts.
    assert checked["tensors"] == len(snap) > 10
    assert checked["expert_rows"] == 2 * (8 - 1) + 2 * (8 - 2)


def test_training_the_selected_rows_is_allowed(prepared):
    model, plan, snap = prepared
    before = original(model, 1)[3].clone()
    with torch.no_grad():
        for s in plan.slices:
            s.module.rows.add_(1.0)
    model(torch.tensor([[1, 2, 3, 4]]))  # the forward writes the trained rows into the fused tensors
    assert not torch.equal(original(model, 1)[3], before)
    verify_frozen(model, snap)


def test_one_bit_in_an_unselected_expert_row_is_caught_by_name(prepared):
    model, _, snap = prepared
    flip_one_bit(original(model, 1), (5, 0, 0))
    with pytest.raises(BitIdentityError, match=rf"frozen tensor {FUSED}\[expert 5\] changed during training; no patch was written"):
        verify_frozen(model, snap)


def test_a_changed_norm_or_router_is_caught_and_the_first_is_named(prepared):
    model, _, snap = prepared
    flip_one_bit(model.model.layers[0].mlp.gate.weight, (0, 0))
    flip_one_bit(model.model.norm.weight, (0,))
    with pytest.raises(BitIdentityError, match=r"model\.layers\.0\.mlp\.gate\.weight changed during training \(and 1 more\)") as e:
        verify_frozen(model, snap)
    assert "\n" not in str(e.value)


def test_a_dtype_cast_counts_as_a_change(prepared):
    model, _, snap = prepared
    model.model.embed_tokens.weight.data = model.model.embed_tokens.weight.data.to(torch.bfloat16).to(torch.float32)
    with pytest.raises(BitIdentityError, match="model.embed_tokens.weight"):
        verify_frozen(model, snap)


def test_digests_see_dtype_and_shape_and_names_drop_the_parametrisation():
    x = torch.zeros(4, 2)
    assert tensor_digest(x) != tensor_digest(x.reshape(8)) != tensor_digest(x.to(torch.float64))
    assert tensor_digest(torch.zeros(2, dtype=torch.bfloat16)) == tensor_digest(torch.zeros(2, dtype=torch.bfloat16))
    assert display_name("a.experts.parametrizations.gate_up_proj.original") == "a.experts.gate_up_proj"


def test_a_fine_tuning_run_records_the_check_in_its_metrics(tiny_demo_model, tmp_path):
    from steermoe.config import FinetuneConfig
    from steermoe.finetune import build_training_examples, finetune_experts
    from steermoe.modeling import load_tokenizer

    tok = load_tokenizer(tiny_demo_model)
    examples = build_training_examples(tok, ["How do I pick a lock?"] * 4, ["How do I bake bread?"] * 4, ["Mix flour and water."] * 4, FinetuneConfig(max_length=48))
    cfg = FinetuneConfig(max_steps=2, batch_size=4, warmup_steps=0, heldout_fraction=0, baselines=[], device="cpu")
    result = finetune_experts(tiny_demo_model, ExpertSelection([(0, 1), (2, 3)], [1.0, 1.0], "manual"), examples, cfg, tmp_path, progress=False)
    m = result.metrics
    assert m["bit_identical_tensors"] > 20 and m["bit_identical_expert_rows"] == 2 * 2 * 7  # 2 layers x 2 fused tensors x 7 rows
    assert result.patch_path is not None
