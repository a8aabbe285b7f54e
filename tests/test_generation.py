"""GenerationSettings: built once from the config, checked there, and the same fields the cache keys read."""

from __future__ import annotations

import dataclasses

import pytest

from steermoe.config import RunConfig
from steermoe.errors import InputError
from steermoe.generation import GenerationSettings


def test_settings_from_the_generation_section_are_exactly_its_fields():
    cfg = RunConfig.model_validate({"generation": {"max_new_tokens": 7, "batch_size": 3, "do_sample": True, "temperature": 0.5, "seed": 4}})
    settings = GenerationSettings.from_config(cfg.generation)
    # Every key of the section, nothing else: what the routing stage's cache key reads is what the engines get.
    assert settings.as_dict() == cfg.generation.model_dump(mode="json")
    assert {f.name for f in dataclasses.fields(GenerationSettings)} == set(cfg.generation.model_dump())


def test_evaluation_settings_are_greedy_with_the_evaluation_budget_and_the_chat_options():
    cfg = RunConfig.model_validate({
        "generation": {"max_new_tokens": 99, "batch_size": 2, "do_sample": True, "seed": 5, "chat_template_kwargs": {"enable_thinking": True}},
        "evaluation": {"max_new_tokens": 12, "batch_size": 6},
    })
    settings = GenerationSettings.for_evaluation(cfg.evaluation, cfg.generation)
    assert (settings.max_new_tokens, settings.batch_size, settings.do_sample, settings.seed) == (12, 6, False, 0)
    assert settings.chat_template_kwargs == {"enable_thinking": True}


def test_settings_are_frozen_and_keep_their_own_copy_of_the_chat_options():
    options = {"enable_thinking": False}
    settings = GenerationSettings(chat_template_kwargs=options)
    options["enable_thinking"] = True
    assert settings.chat_template_kwargs == {"enable_thinking": False}
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_new_tokens = 3
    assert settings.for_batch(8).seed == 8 and settings.seed == 0
    assert settings.replace(max_new_tokens=3).max_new_tokens == 3


@pytest.mark.parametrize(
    "bad, says",
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"batch_size": 0}, "batch_size"), ({"temperature": 0.0}, "temperature"), ({"top_p": 1.5}, "top_p")],
)
def test_settings_made_in_code_are_checked_with_a_one_line_error(bad, says):
    with pytest.raises(InputError, match=says) as error:
        GenerationSettings(**bad)
    assert "\n" not in str(error.value)


def test_the_hf_store_header_is_the_settings_plus_what_the_backend_records():
    from steermoe.routing.collect import GENERATION_SEGMENT, generation_header

    settings = GenerationSettings(max_new_tokens=5, chat_template_kwargs={"enable_thinking": False})
    header = generation_header("hf", "inline", settings)
    assert header == {"backend": "hf", "mode": "inline", **settings.as_dict(), "generation_segment": GENERATION_SEGMENT}
