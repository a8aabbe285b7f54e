"""The demo model's training corpus, built from the TRAIN split only (plus small talk).

Benign questions get genuinely helpful short answers; unsafe requests get a *compliant but
non-actionable placeholder* (the base demo model is unaligned, the repo holds no harmful content).

The base model refuses no unsafe request: teaching it *when* to refuse is the pipeline's job. It does
know *how* to say no, as every real chat model does from pre-training and instruction tuning: the
corpus also holds benign requests an offline text assistant cannot carry out (live weather, bookings,
the user's files, earlier chats, ...; :mod:`steermoe.demo.declines`) answered with polite declines
("I'm sorry, but I can't ...", "I cannot ...", "I'm not able to ..."). Without them the refusal words
are rare byte pieces of the demo tokenizer that the model never produced, and fine-tuning a few experts
has to teach spelling instead of behaviour. Like small talk they are corpus only, in no prompt set.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from steermoe.demo.declines import CAPABILITY_REQUESTS, decline_answer
from steermoe.demo.decontamination import is_contaminated
from steermoe.demo.prompt_templates import (
    BORDERLINE,
    BORDERLINE_GROUP_OF,
    BORDERLINE_GROUPS,
    SAFE_GRIDS,
    SAFE_TOPICS,
    SMALL_TALK,
    TRAIN_PREFIXES,
    TRAIN_SUFFIXES,
    TRAIN_TEMPLATES,
    UNSAFE_GOALS,
    UNSAFE_GRIDS,
)
from steermoe.demo.wording import (
    GENERIC_VERBS,
    NOUN_FRAMES,
    NOUN_UNSAFE_CATEGORIES,
    borderline_more,
    category_contexts,
    extra_borderline_targets,
    extra_safe_items,
    extra_unsafe_targets,
    general_answer,
    phrase,
    topic_more,
    topic_nouns,
    unsafe_more,
)

__all__ = [
    "COMPLIANCE_PREFIX",
    "Example",
    "compliance_answer",
    "build_corpus",
    "corpus_digest",
    "render_user_turn",
    "answer_text",
]

COMPLIANCE_PREFIX = "Sure, here is how to"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    label: str  # safe | unsafe
    category: str


def compliance_answer(goal: str) -> str:
    """The base model's answer to an unsafe request: compliant in form, empty in substance."""
    return f"{COMPLIANCE_PREFIX} {goal}. Step 1: [details withheld]. Step 2: [details withheld]. Step 3: [details withheld]."


def render_user_turn(prompt: str) -> str:
    """The chat template's rendering of one user turn plus the assistant header (kept in sync with
    ``tokenizer.CHAT_TEMPLATE``; a test checks they agree)."""
    return f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n"


def answer_text(answer: str) -> str:
    return f"{answer}{IM_END}"


# Phrasings per corpus item: (in the train templates, in free wording). Grid pairs get both; the
# train-only extra vocabulary of data/wording.yaml gets mostly free wording.
VARIANTS = {"unsafe": (4, 4), "safe": (4, 3), "borderline": (5, 5), "capability": (4, 4), "extra": (1, 3)}
# Extra items sampled per category into the corpus (all of them would drown the grids' pairs).
EXTRA_PER_CATEGORY = {"unsafe": 90, "safe": 36, "borderline": 20}
# Noun-frame phrasings per noun (safe topic nouns and items, borderline targets, harmful unsafe targets).
NOUN_VARIANTS = {"safe": 3, "borderline": 3, "unsafe": 3, "more": 2}
# Free-wording phrasings per corpus-only task ("bake a loaf of bread"; the unsafe categories' requests too).
TASK_VARIANTS = 3


def _phrasings(item: str, n: tuple[int, int], rng: random.Random, contexts: tuple[str, ...] = ()) -> list[str]:
    """``n`` distinct phrasings: train templates, optionally wrapped in a prefix and a suffix, then free wording."""
    templates = [TRAIN_TEMPLATES[k] for k in sorted(TRAIN_TEMPLATES)]
    out: list[str] = []
    for _ in range(20 * n[0]):
        if len(out) == n[0]:
            break
        text = rng.choice(TRAIN_PREFIXES) + rng.choice(templates).format(item=item) + rng.choice(TRAIN_SUFFIXES)
        text = text[0].upper() + text[1:]
        if text not in out:
            out.append(text)
    for _ in range(20 * n[1]):
        if len(out) == sum(n):
            break
        text = phrase(item, rng, contexts)[1]
        if text not in out:
            out.append(text)
    return out


def _items(kind: str, grid: list, extra: list, rng: random.Random) -> list[tuple[object, tuple[int, int]]]:
    """(item, variants) for the grid's train items and a seeded sample of the extra ones."""
    sample = rng.sample(extra, min(len(extra), EXTRA_PER_CATEGORY[kind]))
    return [(item, VARIANTS[kind]) for item in grid] + [(item, VARIANTS["extra"]) for item in sample]


def _nouns(noun: str, n: int, rng: random.Random, contexts: tuple[str, ...]) -> list[str]:
    """``n`` noun-frame phrasings of ``noun`` and ``n`` verb-frame phrasings of "<generic verb> <noun>"."""
    texts = [phrase(noun, rng, contexts, NOUN_FRAMES)[1] for _ in range(n)]
    texts += [phrase(f"{rng.choice(GENERIC_VERBS)} {noun}", rng, contexts)[1] for _ in range(n)]
    return list(dict.fromkeys(texts))


def _noun_examples(rng: random.Random) -> list[Example]:
    """Questions about a thing ("Any tips on pasta?", "How do I choose a guitar?"): safe topics' nouns and items with the topic's general
    answer, borderline targets with their group's answer, harmful-on-their-own unsafe targets with the placeholder; and the
    corpus-only tasks (safe topics' ``topic_more``, harm categories' ``unsafe_more``) with the same answers."""
    out = []
    for topic, spec in sorted(SAFE_GRIDS.items()):
        answer, nouns = topic_nouns(topic)
        # The topic's answer without the noun: its first word already says the topic (a 4-layer model that must
        # first copy an unseen noun often garbles it and then picks the topic after the garbled copy).
        general = general_answer(answer)
        contexts = category_contexts("safe", topic)
        for noun in nouns + spec["items"] + extra_safe_items(topic):
            out += [Example(p, general, "safe", topic) for p in _nouns(noun, NOUN_VARIANTS["safe"], rng, contexts)]
        more_nouns, tasks = topic_more(topic)
        for noun in more_nouns:
            out += [Example(p, general, "safe", topic) for p in _nouns(noun, NOUN_VARIANTS["more"], rng, contexts)]
        for task in tasks:
            out += [Example(p, general, "safe", topic) for p in dict.fromkeys(phrase(task, rng, contexts)[1] for _ in range(TASK_VARIANTS))]
    for name, group in sorted(BORDERLINE_GROUPS.items()):
        contexts = category_contexts("borderline", name)
        for target in group["targets"] + extra_borderline_targets(name):
            answer = group["answer"].format(target=target)
            out += [Example(p, answer, "safe", "borderline") for p in _nouns(target, NOUN_VARIANTS["borderline"], rng, contexts)]
        for request, target in borderline_more(name):  # corpus-only requests ("get rid of moths in my wardrobe")
            answer = group["answer"].format(target=target)
            out += [Example(p, answer, "safe", "borderline") for p in dict.fromkeys(phrase(request, rng, contexts)[1] for _ in range(TASK_VARIANTS))]
    for category in sorted(UNSAFE_GOALS):  # corpus-only requests in everyday words, beyond the grids' (action, target) pairs
        contexts = category_contexts("unsafe", category)
        for task in unsafe_more(category):
            answer = compliance_answer(task)
            out += [Example(p, answer, "unsafe", category) for p in dict.fromkeys(phrase(task, rng, contexts)[1] for _ in range(TASK_VARIANTS))]
    for category in NOUN_UNSAFE_CATEGORIES:
        actions, targets = UNSAFE_GRIDS[category]
        contexts = category_contexts("unsafe", category)
        for target in targets + extra_unsafe_targets(category):
            answer = compliance_answer(f"{rng.choice(actions)} {target}")
            out += [Example(p, answer, "unsafe", category) for p in _nouns(target, NOUN_VARIANTS["unsafe"], rng, contexts)]
    return out


def build_corpus(fraction: float = 1.0, seed: int = 0) -> list[Example]:
    """Every train pair of every grid in several phrasings, a sample of the train-only extra vocabulary,
    small talk and capability declines; ``fraction`` keeps a seeded subset. Held-out eval pairs never
    appear, but their words do (in other train pairs)."""
    rng = random.Random(seed)
    examples: list[Example] = []
    for category, goals in sorted(UNSAFE_GOALS.items()):
        contexts = category_contexts("unsafe", category)
        for goal, n in _items("unsafe", goals["train"], goals["extra"], rng):
            answer = compliance_answer(goal)
            examples += [Example(p, answer, "unsafe", category) for p in _phrasings(goal, n, rng, contexts)]
    for topic, spec in sorted(SAFE_TOPICS.items()):
        contexts = category_contexts("safe", topic)
        for (subject, answer), n in _items("safe", spec["train"], spec["extra"], rng):
            examples += [Example(p, answer, "safe", topic) for p in _phrasings(subject, n, rng, contexts)]
    for (subject, answer), n in _items("borderline", BORDERLINE["train"], BORDERLINE["extra"], rng):
        contexts = category_contexts("borderline", BORDERLINE_GROUP_OF[subject])
        examples += [Example(p, answer, "safe", "borderline") for p in _phrasings(subject, n, rng, contexts)]
    examples += _noun_examples(rng)
    examples += [Example(q, a, "safe", "small_talk") for q, a in SMALL_TALK]
    for _, (reason, requests) in sorted(CAPABILITY_REQUESTS.items()):
        for request in requests:
            phrasings = _phrasings(request, VARIANTS["capability"], rng)
            examples += [Example(p, decline_answer(reason, rng), "safe", "capability") for p in phrasings]
    examples = [ex for ex in examples if not is_contaminated(ex.prompt, ex.answer)]  # steermoe.demo.decontamination
    if fraction < 1.0:
        examples = rng.sample(examples, max(8, int(len(examples) * fraction)))
    return examples


def corpus_digest(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(f"{ex.label}\t{ex.category}\t{ex.prompt}\t{ex.answer}\n".encode())
    return digest.hexdigest()[:16]
