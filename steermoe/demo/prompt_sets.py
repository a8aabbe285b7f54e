"""The built-in prompt sets: rendered from :mod:`steermoe.demo.prompt_templates`, shipped as JSONL.

Three rendered files under ``steermoe/demo/data/``: ``unsafe.jsonl``, ``safe.jsonl`` and
``borderline.jsonl`` (borderline-benign prompts are ``label: safe, category: borderline``). Each row also
records the ``template`` and ``item`` it came from, so the split rule (no shared prompt, item or
template between train and eval) can be checked on the shipped files.

A fourth file, ``ood.jsonl`` (``split: ood``), is *not* rendered: 360 prompts written by hand in free
wording (indirect and polite requests, context sentences, typos, questions and imperatives) to measure
whether the demo world generalises beyond its own templates. It is never used for training or for
choosing settings; borderline rows name their group in ``topic``. A fifth, ``dev.jsonl`` (``split: dev``,
140 prompts: 60 unsafe, 60 safe, 20 borderline), is written by yet another method (one-off chat messages
of invented people) for tuning the demo world's settings, so the ood split stays a clean final measurement.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from steermoe.demo.decontamination import is_contaminated
from steermoe.demo.prompt_templates import (
    BORDERLINE,
    BORDERLINE_GROUP_OF,
    BORDERLINE_GROUPS,
    EVAL_TEMPLATES,
    SAFE_TOPICS,
    UNSAFE_GOALS,
)
from steermoe.demo.wording import category_contexts, phrase

__all__ = ["DATA_DIR", "PROMPT_FILES", "OOD_FILE", "DEV_FILE", "render_prompt_sets", "write_prompt_files", "load_demo_prompts", "demo_prompt_paths"]

DATA_DIR = Path(__file__).parent / "data"
PROMPT_FILES = ("unsafe.jsonl", "safe.jsonl", "borderline.jsonl")  # rendered from the templates
OOD_FILE = "ood.jsonl"  # written by hand, free wording: the final measurement
DEV_FILE = "dev.jsonl"  # written by hand by another method, free wording: for tuning settings
SOURCE = "steermoe-demo"
# Eval: every held-out pair gets two of the six eval templates. Train: every train pair gets
# ``TRAIN_PER_ITEM`` free-wording phrasings (``steermoe.demo.wording``; template id ``w<frame>``), and a seeded
# few of the category's train-only extra items join it, so fine-tuning sees the wording and vocabulary the corpus
# has; two wordings of each request teach it the request rather than the sentence around it.
EVAL_PER_ITEM = 2
TRAIN_PER_ITEM = 2
TRAIN_EXTRAS = {"unsafe": 9, "safe": 6, "borderline": 2}


def _render_eval(items: list[str], offset: int) -> list[tuple[str, str, str]]:
    """(template id, item, prompt) rows; templates rotate so every template is used about equally."""
    templates = sorted(EVAL_TEMPLATES.items())
    rows = []
    for i, item in enumerate(items):
        for j in range(EVAL_PER_ITEM):
            tid, text = templates[(offset + i * EVAL_PER_ITEM + j) % len(templates)]
            rows.append((tid, item, text.format(item=item)))
    return rows


def _clean_phrase(item: str, rng: random.Random, contexts: tuple[str, ...]) -> tuple[int, str]:
    """A free-wording phrasing that holds no held-out material (:mod:`steermoe.demo.decontamination`): drawn again if it does."""
    for _ in range(50):
        index, text = phrase(item, rng, contexts)
        if not is_contaminated(text):
            return index, text
    raise ValueError(f"train item {item!r}: every phrasing holds held-out material; reword it in steermoe/demo/data")


def _train_phrasings(item: str, rng: random.Random, contexts: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """:data:`TRAIN_PER_ITEM` distinct clean phrasings of one train item: (template id, item, prompt) rows."""
    rows: list[tuple[str, str, str]] = []
    for _ in range(20 * TRAIN_PER_ITEM):
        index, text = _clean_phrase(item, rng, contexts)
        if text not in {r[2] for r in rows}:
            rows.append((f"w{index:02d}", item, text))
        if len(rows) == TRAIN_PER_ITEM:
            break
    return rows


def _render_train(items: list[str], kind: str, category: str, contexts: tuple[str, ...]) -> list[tuple[str, str, str]]:
    rng = random.Random(f"{kind}-{category}")  # str seeds are stable across runs and machines
    return [row for item in items for row in _train_phrasings(item, rng, contexts)]


def _with_extras(kind: str, category: str, train: list, extra: list) -> list:
    return train + random.Random(f"extra-{kind}-{category}").sample(extra, min(len(extra), TRAIN_EXTRAS[kind]))


def _records(kind: str, label: str, category: str, rows: list[tuple[str, str, str]], split: str) -> list[dict]:
    out = []
    for n, (tid, item, prompt) in enumerate(rows):
        out.append(
            {
                "id": f"{kind}-{category}-{split}-{n:03d}",
                "prompt": prompt,
                "label": label,
                "category": category,
                "source": SOURCE,
                "split": split,
                "template": tid,
                "item": item,
            }
        )
    return out


def _rows(kind: str, category: str, split: str, items: list[str], offset: int, contexts: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    return _render_train(items, kind, category, contexts) if split == "train" else _render_eval(items, offset)


def render_prompt_sets() -> dict[str, list[dict]]:
    """file name -> records, in a fixed order (deterministic)."""
    sets: dict[str, list[dict]] = {name: [] for name in PROMPT_FILES}
    for split in ("train", "eval"):
        for k, (category, goals) in enumerate(sorted(UNSAFE_GOALS.items())):
            items = _with_extras("unsafe", category, goals["train"], goals["extra"]) if split == "train" else goals["eval"]
            rows = _rows("unsafe", category, split, items, k, category_contexts("unsafe", category))
            sets["unsafe.jsonl"] += _records("unsafe", "unsafe", category, rows, split)
        for k, (topic, spec) in enumerate(sorted(SAFE_TOPICS.items())):
            pairs = _with_extras("safe", topic, spec["train"], spec["extra"]) if split == "train" else spec["eval"]
            rows = _rows("safe", topic, split, [s for s, _ in pairs], k, category_contexts("safe", topic))
            sets["safe.jsonl"] += _records("safe", "safe", topic, rows, split)
        if split == "train":
            pairs = BORDERLINE["train"] + [p for g in sorted(BORDERLINE_GROUPS) for p in _with_extras("borderline", g, [], _extra_of(g))]
            rng = random.Random("borderline")
            rows = [row for s, _ in pairs for row in _train_phrasings(s, rng, category_contexts("borderline", BORDERLINE_GROUP_OF[s]))]
        else:
            rows = _render_eval([s for s, _ in BORDERLINE["eval"]], 0)
        sets["borderline.jsonl"] += _records("borderline", "safe", "borderline", rows, split)
    return sets


def _extra_of(group: str) -> list[tuple[str, str]]:
    return [p for p in BORDERLINE["extra"] if BORDERLINE_GROUP_OF[p[0]] == group]


def write_prompt_files(data_dir: str | Path = DATA_DIR) -> list[Path]:
    """Render the sets and write them as JSONL (how the shipped files are made)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in render_prompt_sets().items():
        path = data_dir / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        paths.append(path)
    return paths


def demo_prompt_paths(ood: bool = True) -> list[Path]:
    """The shipped prompt files: the rendered sets, and the hand-written free-wording ``ood`` and ``dev``
    sets unless ``ood=False``."""
    return [DATA_DIR / name for name in PROMPT_FILES + ((OOD_FILE, DEV_FILE) if ood else ())]


def load_demo_prompts(split: str | None = None) -> pd.DataFrame:
    """The built-in prompt sets as one canonical prompt table (``split``: 'train', 'eval', 'ood', 'dev' or None for all)."""
    from steermoe.prompts import load_prompt_sources

    frame = load_prompt_sources(demo_prompt_paths())
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return frame


if __name__ == "__main__":  # regenerate the shipped files: python -m steermoe.demo.prompt_sets
    for p in write_prompt_files():
        print(p)
