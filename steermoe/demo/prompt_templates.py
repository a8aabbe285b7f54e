"""Templates and compositional topic grids the demo prompt sets and the training corpus are rendered from.

The tables are data, not code: ``data/templates.yaml`` (templates, wrappers, small talk) and ``data/grids.yaml``
(the unsafe, safe and borderline grids); this module loads them and derives the per-split views.

Written for this project. Unsafe entries are *requests only* (action + target phrases); nothing here
says how to do any of them.

Every category is a grid: actions x targets (unsafe), frames x items (safe topics) and, for the
borderline-benign prompts, small groups of risky-sounding verbs x harmless objects. A few
(action, target) *pairs* per grid are held out for eval: every eval request is new as a whole, but
its words are known from train in the same category, so a small model can generalise from the
words instead of having to guess at vocabulary it never saw. Templates are split too: eval prompts
use templates that never appear in train (tests check both). Templates are shared by all three
kinds, so a model has to tell safe from unsafe by content, not by phrasing.

``UNSAFE_GOALS``, ``SAFE_TOPICS`` and ``BORDERLINE`` are the rendered per-split views other modules use.
"""

from __future__ import annotations

from steermoe.demo.data_files import load_table
from steermoe.demo.wording import extra_borderline_pairs, extra_safe_items, extra_unsafe_goals

__all__ = [
    "TRAIN_TEMPLATES",
    "TRAIN_PREFIXES",
    "TRAIN_SUFFIXES",
    "EVAL_TEMPLATES",
    "UNSAFE_GRIDS",
    "SAFE_GRIDS",
    "BORDERLINE_GROUPS",
    "held_out_pairs",
    "UNSAFE_GOALS",
    "SAFE_TOPICS",
    "BORDERLINE",
    "BORDERLINE_GROUP_OF",
    "SMALL_TALK",
]

_TEMPLATES = load_table("templates")
_GRIDS = load_table("grids")

# template id -> text; "{item}" is the goal/subject phrase.
TRAIN_TEMPLATES: dict[str, str] = _TEMPLATES["train_templates"]
# The training corpus (never the prompt sets) also wraps train templates in these, so the model
# learns to look past phrasing it has not seen; eval templates stay unseen.
TRAIN_PREFIXES: tuple[str, ...] = tuple(_TEMPLATES["train_prefixes"])
TRAIN_SUFFIXES: tuple[str, ...] = tuple(_TEMPLATES["train_suffixes"])
EVAL_TEMPLATES: dict[str, str] = _TEMPLATES["eval_templates"]
# Extra benign material for the corpus only (never in a prompt set): greetings and simple chat.
SMALL_TALK: list[tuple[str, str]] = [tuple(pair) for pair in _TEMPLATES["small_talk"]]

# category -> (actions, targets); a goal is "<action> <target>". Requests only.
UNSAFE_GRIDS: dict[str, tuple[list[str], list[str]]] = {c: (g["actions"], g["targets"]) for c, g in _GRIDS["unsafe_grids"].items()}
# topic -> keywords (on-topic check), frames ({item} -> (prompt phrase, helpful answer)) and items.
SAFE_GRIDS: dict[str, dict] = {
    t: {"keywords": g["keywords"], "frames": [(f["prompt"], f["answer"]) for f in g["frames"]], "items": g["items"]}
    for t, g in _GRIDS["safe_grids"].items()
}
# Borderline-benign groups: risky-sounding verbs x harmless objects, one helpful answer per group.
# Label safe, category borderline.
BORDERLINE_GROUPS: dict[str, dict] = _GRIDS["borderline_groups"]


def held_out_pairs(n_rows: int, n_cols: int, shift: int) -> set[tuple[int, int]]:
    """The (row, column) cells of a grid kept for eval: one diagonal, so every action and every
    target is held out in at most a few pairs and still appears in train with other partners."""
    return {(k % n_rows, (k + shift) % n_cols) for k in range(max(n_rows, n_cols))}


def _split_cells(n_rows: int, n_cols: int, shift: int) -> dict[str, list[tuple[int, int]]]:
    held = held_out_pairs(n_rows, n_cols, shift)
    cells = [(i, j) for i in range(n_rows) for j in range(n_cols)]
    return {"train": [c for c in cells if c not in held], "eval": [c for c in cells if c in held]}


def _unsafe_goals() -> dict[str, dict[str, list[str]]]:
    out = {}
    for k, (category, (actions, targets)) in enumerate(sorted(UNSAFE_GRIDS.items())):
        cells = _split_cells(len(actions), len(targets), k)
        out[category] = {s: [f"{actions[i]} {targets[j]}" for i, j in cells[s]] for s in ("train", "eval")}
    return out


def _safe_topics() -> dict[str, dict]:
    out = {}
    for k, (topic, spec) in enumerate(sorted(SAFE_GRIDS.items())):
        frames, items = spec["frames"], spec["items"]
        cells = _split_cells(len(frames), len(items), k)
        out[topic] = {"keywords": spec["keywords"]}
        for s in ("train", "eval"):
            out[topic][s] = [(frames[i][0].format(item=items[j]), frames[i][1].format(item=items[j])) for i, j in cells[s]]
        out[topic]["extra"] = [(p.format(item=item), a.format(item=item)) for item in extra_safe_items(topic) for p, a in frames]
    return out


def _borderline() -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """The per-split (subject, answer) lists and subject -> group."""
    out: dict[str, list[tuple[str, str]]] = {"train": [], "eval": [], "extra": []}
    group_of: dict[str, str] = {}
    pairs: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for k, (name, group) in enumerate(sorted(BORDERLINE_GROUPS.items())):
        actions, targets = group["actions"], group["targets"]
        cells = _split_cells(len(actions), len(targets), k)
        pairs[name] = {s: [(actions[i], targets[j]) for i, j in cells[s]] for s in ("train", "eval")}
    held = {f"{a} {t}" for p in pairs.values() for a, t in p["eval"]}
    for name, group in sorted(BORDERLINE_GROUPS.items()):
        pairs[name]["extra"] = extra_borderline_pairs(name, group["actions"], group["targets"], held)
        for s in ("train", "eval", "extra"):
            rows = [(f"{a} {t}", group["answer"].format(target=t)) for a, t in pairs[name][s]]
            out[s] += rows
            group_of.update({subject: name for subject, _ in rows})
    return out, group_of


def _with_extra_goals(goals: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    held = {g for spec in goals.values() for g in spec["eval"]}
    for category, (actions, targets) in UNSAFE_GRIDS.items():
        goals[category]["extra"] = extra_unsafe_goals(category, actions, targets, held)
    return goals


# category -> {"train": [goal, ...], "eval": [...], "extra": [...]}: goal phrases, never instructions.
# "extra" goals use the train-only vocabulary of data/wording.yaml (corpus and train split only).
UNSAFE_GOALS = _with_extra_goals(_unsafe_goals())
# topic -> {"keywords": [...], "train": [(subject, answer), ...], "eval": [...], "extra": [...]}
SAFE_TOPICS = _safe_topics()
# {"train": [(subject, answer), ...], "eval": [...], "extra": [...]} and subject -> borderline group
BORDERLINE, BORDERLINE_GROUP_OF = _borderline()
