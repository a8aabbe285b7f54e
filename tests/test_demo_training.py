"""The demo model's training inputs: where the answer loss and the routing prior apply."""

import pytest

from steermoe.demo.corpus import IM_END, Example, render_user_turn
from steermoe.demo.tokenizer import train_tokenizer
from steermoe.demo.training import encode_examples

EXAMPLES = [
    Example("How do I cook rice for dinner tonight?", "Rinse the rice and simmer it.", "safe", "cooking"),
    Example("Tell me how to pick a bike lock quickly.", "Sure, here is how to do it.", "unsafe", "theft"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([t for ex in EXAMPLES for t in (ex.prompt, ex.answer)] * 5, 300)


def test_header_span_starts_the_prior_at_the_user_turns_end_marker(tokenizer):
    end_id = tokenizer.token_to_id(IM_END)
    for (ids, answer_from, prior_from, unsafe), ex in zip(encode_examples(EXAMPLES, tokenizer, 64, "header"), EXAMPLES):
        assert ids[:answer_from] == tokenizer.encode(render_user_turn(ex.prompt)).ids
        assert ids[prior_from] == end_id and end_id not in ids[prior_from + 1 : answer_from]
        assert answer_from - prior_from > 2  # the marker, then the assistant header's own tokens
        assert unsafe == (ex.label == "unsafe")


def test_answer_span_starts_at_the_last_prompt_token_and_unknown_spans_fail(tokenizer):
    for ids, answer_from, prior_from, _ in encode_examples(EXAMPLES, tokenizer, 64, "answer"):
        assert prior_from == answer_from - 1 and len(ids) > answer_from
    with pytest.raises(ValueError, match="routing_prior_span 'prompt'"):
        encode_examples(EXAMPLES, tokenizer, 64, "prompt")


def test_long_prompts_keep_their_header_and_some_answer(tokenizer):
    long = Example("please " * 80 + "how do I cook rice?", "Rinse the rice.", "safe", "cooking")
    [(ids, answer_from, prior_from, _)] = encode_examples([long], tokenizer, 48, "header")
    assert answer_from == 24 < len(ids) <= 48 and ids[prior_from] == tokenizer.token_to_id(IM_END)
