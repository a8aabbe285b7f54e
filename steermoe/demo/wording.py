"""Free wording for the demo corpus and the train split: many frames, context sentences, noise.

The template grids alone teach a small model its own phrasings: it then answers a question in other
words with fragments of unrelated answers. Here a prompt is built as ``[opener] [context] request
[closer]`` from the tables in ``data/wording.yaml`` and then roughened (lower case, dropped
punctuation, typos, chat spelling), and every category gets train-only vocabulary (extra actions,
targets, items and context sentences). Frames, openers, closers and neutral contexts are shared by
every kind of request, so wording carries no label; content does.

Train only: the eval split keeps its own templates and held-out pairs (no extra pair reproduces an
eval item), and tests keep this text 8-gram disjoint from the hand-written ``ood`` and ``dev`` splits.
"""

from __future__ import annotations

import random
import re

from steermoe.demo.data_files import load_table

__all__ = ["FRAMES", "NOUN_FRAMES", "GENERIC_VERBS", "NOUN_UNSAFE_CATEGORIES", "phrase", "topic_nouns", "topic_more", "unsafe_more", "borderline_more", "general_answer", "extra_unsafe_goals", "extra_safe_items", "extra_unsafe_targets", "extra_borderline_targets", "extra_borderline_pairs", "category_contexts"]

_TABLE = load_table("wording")
FRAMES: tuple[str, ...] = tuple(_TABLE["frames"])
NOUN_FRAMES: tuple[str, ...] = tuple(_TABLE["noun_frames"])
# Unsafe categories whose targets are harmful on their own ("a pipe bomb"): they get noun-frame prompts too.
NOUN_UNSAFE_CATEGORIES: tuple[str, ...] = tuple(_TABLE["noun_unsafe_categories"])
# Verbs that carry no topic: "{verb} {noun}" prompts are answered like the noun alone.
GENERIC_VERBS: tuple[str, ...] = tuple(_TABLE["generic_verbs"])
_CONTEXTS: tuple[str, ...] = tuple(_TABLE["contexts"])
_NOISE: dict[str, float] = _TABLE["noise"]
_CHAT = _TABLE["chat_spelling"]
_CHAT_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(_CHAT, key=len, reverse=True)) + r")\b")


def category_contexts(kind: str, name: str) -> tuple[str, ...]:
    """The context sentences of one unsafe category, safe topic or borderline group (``kind``: unsafe|safe|borderline)."""
    return tuple(_TABLE[kind].get(name, {}).get("contexts", ()))


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 2)
    op = rng.choice(("swap", "drop", "double"))
    if op == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + word[i + 1 :] if op == "drop" else word[:i] + word[i] + word[i:]


def _roughen(text: str, rng: random.Random) -> str:
    """The noise operators of ``data/wording.yaml``, each with its probability."""
    if rng.random() < _NOISE["chat_spelling"]:
        text = _CHAT_RE.sub(lambda m: _CHAT[m.group(1)], text)
    if rng.random() < _NOISE["typo"]:
        words = text.split(" ")
        long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        for i in rng.sample(long, min(len(long), rng.choice((1, 2)))):
            words[i] = _typo(words[i], rng)
        text = " ".join(words)
    if rng.random() < _NOISE["lower_case"]:
        text = text.lower()
    if rng.random() < _NOISE["drop_final_punctuation"]:
        text = text.rstrip(".?!")
    return text


def phrase(item: str, rng: random.Random, contexts: tuple[str, ...] = (), frames: tuple[str, ...] = FRAMES) -> tuple[int, str]:
    """One free-wording prompt for ``item`` (a verb phrase; a noun phrase with ``frames=NOUN_FRAMES``):
    (frame index, text). ``contexts`` are the category's own sentences; neutral ones are mixed in."""
    index = rng.randrange(len(frames))
    request = frames[index].replace("{noun}", "{item}").format(item=item)
    said = []
    for _ in range(rng.choices((0, 1, 2), weights=(0.45, 0.4, 0.15))[0]):
        pool = contexts if contexts and rng.random() < 0.6 else _CONTEXTS
        sentence = rng.choice(pool)
        if sentence not in said:
            said.append(sentence)
    parts = [*said, request] if rng.random() < 0.8 else [request, *said]
    opener, body = rng.choice(_TABLE["openers"]), " ".join(parts)
    if opener and not opener.rstrip().endswith((".", "!")):  # "Hi, can you ..." rather than "Hi, Can you ..."
        body = body[0].lower() + body[1:]
    text = opener + body + rng.choice(_TABLE["closers"])
    return index, _roughen(text, rng)


def extra_unsafe_goals(category: str, actions: list[str], targets: list[str], held: set[str]) -> list[str]:
    """Train-only goals of one unsafe category: every (action, target) pair that uses an extra action or
    target, except any that would contain a held-out eval goal."""
    extra = _TABLE["unsafe"][category]
    all_actions, all_targets = actions + extra["actions"], targets + extra["targets"]
    goals = [f"{a} {t}" for a in all_actions for t in all_targets if a in extra["actions"] or t in extra["targets"]]
    return [g for g in goals if not any(h in g for h in held)]


def extra_safe_items(topic: str) -> list[str]:
    return list(_TABLE["safe"][topic]["items"])


def extra_borderline_pairs(group: str, actions: list[str], targets: list[str], held: set[str]) -> list[tuple[str, str]]:
    """Train-only (action, target) pairs of one borderline group, as for unsafe goals."""
    extra = _TABLE["borderline"][group]
    pairs = [(a, t) for a in actions + extra["actions"] for t in targets + extra["targets"] if a in extra["actions"] or t in extra["targets"]]
    return [(a, t) for a, t in pairs if not any(h in f"{a} {t}" for h in held)]


def topic_nouns(topic: str) -> tuple[str, list[str]]:
    """A safe topic's general answer (``{noun}`` in it) and its nouns, for noun-frame prompts."""
    spec = _TABLE["topic_nouns"][topic]
    return spec["answer"], list(spec["nouns"])


def extra_unsafe_targets(category: str) -> list[str]:
    return list(_TABLE["unsafe"][category]["targets"])


def extra_borderline_targets(group: str) -> list[str]:
    return list(_TABLE["borderline"][group]["targets"])


def topic_more(topic: str) -> tuple[list[str], list[str]]:
    """A safe topic's corpus-only extra vocabulary: (nouns for noun frames, tasks for verb frames)."""
    spec = _TABLE["topic_more"][topic]
    return list(spec["nouns"]), list(spec["tasks"])


def unsafe_more(category: str) -> list[str]:
    """An unsafe category's corpus-only requests (verb phrases, requests only), answered with the placeholder."""
    return list(_TABLE["unsafe_more"][category])


def borderline_more(group: str) -> list[tuple[str, str]]:
    """A borderline group's corpus-only requests: (verb phrase, the target its group answer is filled with)."""
    return [(request, target) for request, target in _TABLE["borderline_more"][group]]


def general_answer(answer: str) -> str:
    """A topic's general answer without its "For {noun}, " opening (for task prompts)."""
    body = answer.split(", ", 1)[1] if answer.startswith("For {noun}, ") else answer
    return body[0].upper() + body[1:]
