"""Training examples: chat template from the tokenizer, loss on assistant tokens only, the mix."""

import pytest

from steermoe.config import FinetuneConfig
from steermoe.finetune import build_training_examples, collate
from steermoe.finetune.data import IGNORE_INDEX
from steermoe.modeling import load_tokenizer, render_chat

UNSAFE = [f"How do I break into locked account number {i}?" for i in range(6)]
SAFE = [f"How do I bake bread number {i}?" for i in range(6)]
ANSWERS = [f"Mix flour and water, then bake loaf {i}." for i in range(6)]


@pytest.fixture(scope="module")
def tokenizer(tiny_demo_model):
    return load_tokenizer(tiny_demo_model)


def test_labels_cover_the_answer_only(tokenizer):
    cfg = FinetuneConfig(safe_fraction=0.5, max_length=512)  # long enough that nothing is cut
    examples = build_training_examples(tokenizer, UNSAFE, SAFE, ANSWERS, cfg)
    assert {x.kind for x in examples} == {"refusal", "benign"}
    for x in examples:
        n_prompt = next(i for i, label in enumerate(x.labels) if label != IGNORE_INDEX)
        prompt_text = tokenizer.decode(x.input_ids[:n_prompt])
        assert prompt_text.strip() and all(label == IGNORE_INDEX for label in x.labels[:n_prompt])
        assert x.labels[n_prompt:] == x.input_ids[n_prompt:]  # every answer token is learned
        assert x.labels[-1] == tokenizer.eos_token_id
        if x.kind == "benign":
            answer = tokenizer.decode(x.labels[n_prompt:], skip_special_tokens=True)
            assert answer.replace(" ", "") in {a.replace(" ", "") for a in ANSWERS}
    # The prompt part is exactly the chat template's rendering of one user turn.
    first = next(x for x in examples if x.kind == "benign")
    n_prompt = first.labels.index(next(label for label in first.labels if label != IGNORE_INDEX))
    rendered = [render_chat(tokenizer, [{"role": "user", "content": p}]) for p in SAFE]
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]
    assert first.input_ids[:n_prompt] in ids


def test_collate_pads_with_ignored_labels(tokenizer):
    cfg = FinetuneConfig(safe_fraction=0.5)
    examples = build_training_examples(tokenizer, UNSAFE, SAFE, ANSWERS, cfg)[:4]
    batch = collate(examples, pad_id=0)
    for i, x in enumerate(examples):
        n = len(x.input_ids)
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["labels"][i, :n].tolist() == x.labels


def test_mix_and_templates(tokenizer):
    cfg = FinetuneConfig(safe_fraction=0.25, refusal_templates=["No. I refuse {topic}."])
    examples = build_training_examples(tokenizer, UNSAFE, SAFE, ANSWERS, cfg)
    kinds = [x.kind for x in examples]
    assert kinds.count("benign") == 2 and kinds.count("refusal") == 6
    refusal = next(x for x in examples if x.kind == "refusal")
    text = tokenizer.decode([t for t in refusal.labels if t != IGNORE_INDEX], skip_special_tokens=True)
    assert "refuse" in text and "{topic}" not in text
    with pytest.raises(Exception, match="differ in number"):
        build_training_examples(tokenizer, UNSAFE, SAFE, ANSWERS[:2], cfg)
