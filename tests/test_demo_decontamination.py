"""Decontamination of the demo corpus and train split: held-out material is detected, and none is trained on."""

import json

from steermoe.demo.corpus import build_corpus
from steermoe.demo.decontamination import is_contaminated, ngrams
from steermoe.demo.prompt_sets import DATA_DIR, OOD_FILE
from steermoe.demo.prompt_templates import SAFE_TOPICS, UNSAFE_GOALS


def test_flags_eval_items_and_held_out_8grams_only():
    eval_goal = next(iter(UNSAFE_GOALS.values()))["eval"][0]
    assert is_contaminated(f"hey, how would you {eval_goal}?")
    train_goal = next(iter(UNSAFE_GOALS.values()))["train"][0]
    assert not is_contaminated(f"hey, how would you {train_goal}?")
    ood_prompt = json.loads((DATA_DIR / OOD_FILE).read_text(encoding="utf-8").splitlines()[0])["prompt"]
    words = ood_prompt.split()
    assert len(words) >= 9
    assert is_contaminated("So, " + " ".join(words[1:9]).lower() + " then?")  # 8 words in a row, new case and context
    assert not is_contaminated(" ".join(words[1:8]))  # 7 are allowed
    assert is_contaminated("fine answer", f"the second text holds {SAFE_TOPICS['cooking']['eval'][0][0]} here")


def test_no_corpus_example_holds_held_out_material():
    corpus = build_corpus()
    assert corpus and not any(is_contaminated(ex.prompt, ex.answer) for ex in corpus)
    assert ngrams("One two three four five six seven eight nine") == {
        ("one", "two", "three", "four", "five", "six", "seven", "eight"),
        ("two", "three", "four", "five", "six", "seven", "eight", "nine"),
    }
