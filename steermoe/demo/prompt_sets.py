"""The built-in prompt sets: rendered from :mod:`steermoe.demo.prompt_templates`, shipped as JSONL.

Three rendered files under ``steermoe/demo/data/``: ``unsafe.jsonl``, ``safe.jsonl`` and
``borderline.jsonl`` (borderline-benign prompts are ``label: safe, category: borderline``). Each row also
records the ``template`` and ``item`` it came from, so the split rule (no shared prompt, item or
template between train and eval) can be checked on the shipped files.

A fourth file, ``ood.jsonl`` (``split: ood``), is *not* rendered: 360 prompts written by hand in free
wording (indirect and polite requests, context sentences, typos, questions and imperatives) to measure
whether the demo world generalises beyond its own templates. It is never used for training or for
choosing settings; borderline rows name their group in ``topic``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from steermoe.demo.prompt_templates import BORDERLINE, EVAL_TEMPLATES, SAFE_TOPICS, TRAIN_TEMPLATES, UNSAFE_GOALS

__all__ = ["DATA_DIR", "PROMPT_FILES", "OOD_FILE", "render_prompt_sets", "write_prompt_files", "load_demo_prompts", "demo_prompt_paths"]

DATA_DIR = Path(__file__).parent / "data"
PROMPT_FILES = ("unsafe.jsonl", "safe.jsonl", "borderline.jsonl")  # rendered from the templates
OOD_FILE = "ood.jsonl"  # written by hand, free wording
SOURCE = "steermoe-demo"
# Templates per item: every train pair gets one of the train templates (rotating), every held-out
# eval pair two of the six eval templates.
PER_ITEM = {"train": 1, "eval": 2}


def _templates(split: str) -> list[tuple[str, str]]:
    return sorted((TRAIN_TEMPLATES if split == "train" else EVAL_TEMPLATES).items())


def _render(items: list[str], split: str, offset: int) -> list[tuple[str, str, str]]:
    """(template id, item, prompt) rows; templates rotate so every template is used about equally."""
    templates = _templates(split)
    rows = []
    for i, item in enumerate(items):
        for j in range(PER_ITEM[split]):
            tid, text = templates[(offset + i * PER_ITEM[split] + j) % len(templates)]
            rows.append((tid, item, text.format(item=item)))
    return rows


def _records(kind: str, label: str, category: str, split: str, items: list[str], offset: int) -> list[dict]:
    out = []
    for n, (tid, item, prompt) in enumerate(_render(items, split, offset)):
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


def render_prompt_sets() -> dict[str, list[dict]]:
    """file name -> records, in a fixed order (deterministic)."""
    sets: dict[str, list[dict]] = {name: [] for name in PROMPT_FILES}
    for split in ("train", "eval"):
        for k, (category, goals) in enumerate(sorted(UNSAFE_GOALS.items())):
            sets["unsafe.jsonl"] += _records("unsafe", "unsafe", category, split, goals[split], k)
        for k, (topic, spec) in enumerate(sorted(SAFE_TOPICS.items())):
            subjects = [s for s, _ in spec[split]]
            sets["safe.jsonl"] += _records("safe", "safe", topic, split, subjects, k)
        sets["borderline.jsonl"] += _records("borderline", "safe", "borderline", split, [s for s, _ in BORDERLINE[split]], 0)
    return sets


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
    """The shipped prompt files: the rendered sets, and the free-wording ``ood`` set unless ``ood=False``."""
    return [DATA_DIR / name for name in PROMPT_FILES + ((OOD_FILE,) if ood else ())]


def load_demo_prompts(split: str | None = None) -> pd.DataFrame:
    """The built-in prompt sets as one canonical prompt table (``split``: 'train', 'eval', 'ood' or None for all)."""
    from steermoe.prompts import load_prompt_sources

    frame = load_prompt_sources(demo_prompt_paths())
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return frame


if __name__ == "__main__":  # regenerate the shipped files: python -m steermoe.demo.prompt_sets
    for p in write_prompt_files():
        print(p)
