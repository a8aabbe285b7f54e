"""OpenAI-compatible chat endpoints (the LLM judge, the refusal writer for fine-tuning targets) through
the maintained ``openai`` client: its timeouts, and its retries with backoff on connection errors,
408/409/429 and 5xx replies, replace a hand-made ``urllib`` loop. Failures become one-line errors
naming the setting and the URL.
"""

from __future__ import annotations

from steermoe.errors import InputError

__all__ = ["ChatEndpoint", "api_base"]


def api_base(url: str) -> str:
    """The ``/v1`` root the client wants, from the server root or the ``/v1`` URL."""
    root = url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


class ChatEndpoint:
    """One model behind an OpenAI-compatible ``/v1/chat/completions``; ``where`` names the setting
    that configured it (used in every error)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0, retries: int = 3, where: str = "endpoint"):
        from openai import OpenAI

        self.base_url, self.model, self.where, self.retries = api_base(base_url), model, where, retries
        self.url = self.base_url + "/chat/completions"
        # A local vLLM server needs no key; the client insists on one, and an unused one is harmless.
        self.client = OpenAI(base_url=self.base_url, api_key=api_key or "none", timeout=timeout, max_retries=retries)

    def complete(self, content: str, **options) -> str:
        """The reply text to one user message (``options``: temperature, max_tokens, ...)."""
        import openai

        try:
            reply = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": content}], **options)
        except openai.APIStatusError as e:
            raise InputError(f"{self.where}: {self.url} answered HTTP {e.status_code}: {str(e.message)[:200]}") from None
        except openai.APIConnectionError as e:  # timeouts included, after the client's retries
            raise InputError(f"{self.where}: {self.url} unreachable after {self.retries + 1} tries ({e}); is the server running?") from None
        text = reply.choices[0].message.content if reply.choices else None
        if text is None:
            raise InputError(f"{self.where}: {self.url} replied without choices[0].message.content: {str(reply)[:200]}")
        return text
