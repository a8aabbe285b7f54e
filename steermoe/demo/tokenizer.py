"""A small byte-level BPE tokenizer trained on the demo corpus, with a Qwen-style chat template."""

from __future__ import annotations

from pathlib import Path

__all__ = ["SPECIAL_TOKENS", "CHAT_TEMPLATE", "train_tokenizer", "wrap_tokenizer", "save_tokenizer"]

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

# ChatML as the Qwen family writes it. ``enable_thinking`` (and any other kwarg) is accepted; the
# demo model has no thinking mode, so it renders the same either way.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE: every string is encodable (eval prompts use words the corpus never saw)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def wrap_tokenizer(tok, max_length: int):
    """A transformers fast tokenizer around ``tok``: ChatML template, EOS ``<|im_end|>``, pad ``<|endoftext|>``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tok, out_dir: str | Path, max_length: int):
    """Wrap as a transformers fast tokenizer and save (tokenizer.json + tokenizer_config.json)."""
    fast = wrap_tokenizer(tok, max_length)
    fast.save_pretrained(str(out_dir))
    return fast
