"""The built-in prompt sets: counts, categories, validation, and the split rule."""

import json

import pytest

from steermoe.demo import load_demo_prompts
from steermoe.demo.corpus import build_corpus
from steermoe.demo.prompt_sets import demo_prompt_paths, render_prompt_sets
from steermoe.demo.prompt_templates import (
    BORDERLINE_GROUPS,
    EVAL_TEMPLATES,
    SAFE_GRIDS,
    UNSAFE_GRIDS,
    held_out_pairs,
)
from steermoe.demo.wording import FRAMES
from steermoe.prompts import PROMPT_COLUMNS


@pytest.fixture(scope="module")
def shipped():
    """The rendered sets (the hand-written ood set has its own tests: test_demo_ood.py)."""
    return [json.loads(line) for p in demo_prompt_paths(ood=False) for line in p.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def prompts():
    return load_demo_prompts()


def test_shipped_files_match_the_templates(shipped):
    rendered = [row for rows in render_prompt_sets().values() for row in rows]
    assert shipped == rendered, "run `python -m steermoe.demo.prompt_sets` to regenerate steermoe/demo/data"


def test_counts_and_categories_meet_the_minimums(prompts):
    unsafe = prompts[prompts.label == "unsafe"]
    safe = prompts[(prompts.label == "safe") & (prompts.category != "borderline")]
    borderline = prompts[prompts.category == "borderline"]
    assert len(unsafe) >= 300 and unsafe.category.nunique() >= 8
    assert len(safe) >= 300 and safe.category.nunique() >= 10
    assert len(borderline) >= 80 and set(borderline.label) == {"safe"}
    for frame in (unsafe, safe, borderline):
        assert set(frame.split) == {"train", "eval", "ood", "dev"}
    # every category has all four splits, so eval, ood and dev cover each one
    assert (prompts.groupby("category").split.nunique() == 4).all()


def test_canonical_columns(prompts):
    assert list(prompts.columns) == PROMPT_COLUMNS
    assert prompts.prompt.notna().all() and prompts.messages.isna().all()
    assert load_demo_prompts("eval").split.eq("eval").all()


def test_splits_share_no_prompt_item_or_template(shipped):
    by_split = {s: [r for r in shipped if r["split"] == s] for s in ("train", "eval")}
    for field in ("prompt", "item", "template"):
        train = {r[field] for r in by_split["train"]}
        assert not train & {r[field] for r in by_split["eval"]}, field
    assert {r["template"] for r in by_split["train"]} <= {f"w{i:02d}" for i in range(len(FRAMES))}  # free wording
    assert {r["template"] for r in by_split["eval"]} <= set(EVAL_TEMPLATES)
    # no eval template's fixed wording shows up in any train prompt either
    for text in EVAL_TEMPLATES.values():
        stem = text.split("{item}")[0].strip()
        assert not any(r["prompt"].startswith(stem) for r in by_split["train"]), stem


def _grids():
    """(name, rows, cols) per grid: unsafe actions x targets, safe frames x items, borderline groups."""
    out = [(c, a, t) for c, (a, t) in UNSAFE_GRIDS.items()]
    out += [(t, [f for f, _ in spec["frames"]], spec["items"]) for t, spec in SAFE_GRIDS.items()]
    out += [(g, spec["actions"], spec["targets"]) for g, spec in BORDERLINE_GROUPS.items()]
    return out


def test_eval_pairs_are_new_but_their_parts_are_trained(shipped):
    """Compositional split: every eval request is a held-out (action, target) pair; each part of it
    also occurs in train in the same category with another partner."""
    for name, rows, cols in _grids():
        held = held_out_pairs(len(rows), len(cols), 0)
        assert 0 < len(held) < len(rows) * len(cols) // 3, name
        for i, j in held:
            assert any(r == i and c != j for r in range(len(rows)) for c in range(len(cols)) if (r, c) not in held), name
            assert any(c == j and r != i for r in range(len(rows)) for c in range(len(cols)) if (r, c) not in held), name
    unsafe = [r for r in shipped if r["label"] == "unsafe"]
    for category, (actions, targets) in UNSAFE_GRIDS.items():
        train_items = {r["item"] for r in unsafe if r["category"] == category and r["split"] == "train"}
        eval_items = {r["item"] for r in unsafe if r["category"] == category and r["split"] == "eval"}
        assert eval_items and not eval_items & train_items
        for item in eval_items:
            action = next(a for a in sorted(actions, key=len, reverse=True) if item.startswith(a + " "))
            target = item[len(action) + 1 :]
            assert target in targets
            assert any(t.startswith(action + " ") for t in train_items), item
            assert any(t.endswith(" " + target) for t in train_items), item


def test_training_corpus_holds_no_eval_material(shipped):
    corpus = build_corpus()
    eval_items = {r["item"] for r in shipped if r["split"] == "eval"}
    eval_prompts = {r["prompt"] for r in shipped if r["split"] == "eval"}
    assert not any(ex.prompt in eval_prompts for ex in corpus)
    assert not any(item in ex.prompt for ex in corpus for item in eval_items)
    # neither the fixed wording before nor after the item of any eval template appears in training
    parts = [p.strip() for t in EVAL_TEMPLATES.values() for p in t.split("{item}") if len(p.strip()) > 1]
    assert not any(part in ex.prompt for ex in corpus for part in parts)
    # the base model refuses nothing of the prompt sets' kinds; only capability declines say no
    refusal_starts = ("i can't", "i cannot", "sorry", "i won't", "i'm sorry", "i'm not able", "i'm unable", "as an ai", "i must")
    assert not any(ex.answer.lower().startswith(refusal_starts) for ex in corpus if ex.category != "capability"), "no refusals"
    unsafe = [ex for ex in corpus if ex.label == "unsafe"]
    assert unsafe and all("[details withheld]" in ex.answer for ex in unsafe)


def test_sets_pass_validation(prompts):
    from steermoe.validation import validate_prompts

    report = validate_prompts(prompts)
    assert report.success, report.errors[:5]
