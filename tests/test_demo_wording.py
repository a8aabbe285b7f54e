"""Free wording for the demo corpus and the train split: varied, roughened, and train only."""

import json
import random
import re

from steermoe.demo.corpus import build_corpus, compliance_answer
from steermoe.demo.declines import CAPABILITY_REQUESTS
from steermoe.demo.prompt_sets import DATA_DIR, DEV_FILE, OOD_FILE, PROMPT_FILES
from steermoe.demo.prompt_templates import BORDERLINE, BORDERLINE_GROUPS, EVAL_TEMPLATES, SAFE_TOPICS, UNSAFE_GOALS
from steermoe.demo.quality import answer_topic, is_on_topic, topic_vocabularies
from steermoe.demo.wording import (
    FRAMES,
    borderline_more,
    category_contexts,
    general_answer,
    phrase,
    topic_more,
    topic_nouns,
    unsafe_more,
)


def test_phrasings_vary_in_frame_length_and_noise():
    rng = random.Random(0)
    texts = [phrase("cook rice for dinner", rng, category_contexts("safe", "cooking"))[1] for _ in range(400)]
    assert len(set(texts)) > 350
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) <= 8 and max(lengths) >= 20
    assert sum(t == t.lower() for t in texts) >= 40  # lower-cased
    assert sum(len(re.findall(r"[.?!](\s|$)", t)) >= 2 for t in texts) >= 80  # context sentences


def test_no_frame_or_extra_item_reaches_the_eval_split():
    stems = [p.strip() for t in EVAL_TEMPLATES.values() for p in t.split("{item}") if len(p.strip()) > 1]
    assert not [f for f in FRAMES if any(s.lower() in f.lower() for s in stems)]
    eval_items = {g for spec in UNSAFE_GOALS.values() for g in spec["eval"]}
    eval_items |= {s for spec in SAFE_TOPICS.values() for s, _ in spec["eval"]} | {s for s, _ in BORDERLINE["eval"]}
    extras = [g for spec in UNSAFE_GOALS.values() for g in spec["extra"]] + [s for s, _ in BORDERLINE["extra"]]
    extras += [s for spec in SAFE_TOPICS.values() for s, _ in spec["extra"]]
    assert extras and not [x for x in extras if any(item in x for item in eval_items)]


def test_capability_requests_share_no_content_word_with_the_extra_vocabulary():
    def words(texts):
        return {w for t in texts for w in re.findall(r"[a-z']+", t.lower()) if len(w) >= 4} - {"from", "that", "this", "with", "what", "your", "about"}

    requests = words(item for _, items in CAPABILITY_REQUESTS.values() for item in items)
    extras = words([g for spec in UNSAFE_GOALS.values() for g in spec["extra"]] + [s for s, _ in BORDERLINE["extra"]])
    extras |= words(s for spec in SAFE_TOPICS.values() for s, _ in spec["extra"])
    assert not requests & extras, requests & extras


def test_every_safe_answer_of_the_corpus_is_classified_into_its_own_topic():
    """The on-topic judge (answer's words -> topic) agrees with the corpus's own labels."""
    corpus = [ex for ex in build_corpus() if ex.label == "safe" and ex.category in SAFE_TOPICS]
    assert all(is_on_topic(ex.answer, ex.category) for ex in corpus)
    # and an answer from another topic, a refusal or a placeholder is not on topic
    cooking = SAFE_TOPICS["cooking"]["train"][0][1]
    assert answer_topic(cooking)[0] == {"cooking"} and not is_on_topic(cooking, "music")
    assert not is_on_topic("I'm sorry, but I can't help with that.", "cooking")
    assert not is_on_topic("Sure, here is how to cook rice. Step 1: [details withheld].", "cooking")
    subject, answer = BORDERLINE["train"][0]
    assert is_on_topic(answer, "borderline", item=subject)


def test_topic_vocabulary_prompts_get_the_topic_answer_without_copying_the_noun():
    """Questions about a thing or a task ("Any tips on sourdough?", "how to tune a guitar") are answered with the
    topic's general answer, whose first words already say the topic; the corpus-only vocabulary is not in the judge's."""
    for topic in SAFE_TOPICS:
        answer, nouns = topic_nouns(topic)
        more, tasks = topic_more(topic)
        assert len(more) >= 50 and len(tasks) >= 20 and not set(more) & set(nouns)
        general = general_answer(answer)
        assert "{noun}" not in general and is_on_topic(general, topic)
    corpus = build_corpus()
    sourdough = [ex for ex in corpus if "sourdough" in ex.prompt]
    # Cooking's context sentences mention it too ("My sourdough always comes out flat"), under other cooking requests.
    assert sourdough and {ex.category for ex in sourdough} == {"cooking"}
    assert general_answer(topic_nouns("cooking")[0]) in {ex.answer for ex in sourdough}
    assert "sourdough" not in topic_vocabularies()["cooking"]


def _shipped_prompts() -> list[str]:
    return [json.loads(line)["prompt"].lower() for name in (*PROMPT_FILES, OOD_FILE, DEV_FILE)
            for line in (DATA_DIR / name).read_text().splitlines() if line.strip()]


def test_borderline_corpus_requests_are_corpus_only_and_answered_with_their_group_answer():
    """Every borderline group has corpus-only requests ("kill a frozen app"), answered with the group's answer filled
    with the request's own target, in no shipped split."""
    requests = {g: borderline_more(g) for g in BORDERLINE_GROUPS}
    assert all(len(r) >= 20 and all(target in request for request, target in r) for r in requests.values())
    prompts = _shipped_prompts()
    assert not [r for rs in requests.values() for r, _ in rs if any(r.lower() in p for p in prompts)]
    answers = {(ex.answer, ex.category) for ex in build_corpus()}
    missing = [r for g, rs in requests.items() for r, t in rs if (BORDERLINE_GROUPS[g]["answer"].format(target=t), "borderline") not in answers]
    assert not missing, missing


def test_unsafe_corpus_vocabulary_is_corpus_only_and_answered_with_the_placeholder():
    """Every harm category has corpus-only requests in everyday words: the corpus answers them with the placeholder,
    and no prompt of any shipped split (train, eval, dev, ood) contains one."""
    tasks = {c: unsafe_more(c) for c in UNSAFE_GOALS}
    assert all(len(t) >= 20 and len(set(t)) == len(t) for t in tasks.values())
    prompts = _shipped_prompts()
    assert len(prompts) > 1000
    leaks = [t for ts in tasks.values() for t in ts if any(t.lower() in p for p in prompts)]
    assert not leaks, leaks
    answers = {ex.answer: ex.category for ex in build_corpus() if ex.label == "unsafe"}
    missing = [t for c, ts in tasks.items() for t in ts if answers.get(compliance_answer(t)) != c]
    assert not missing, missing
