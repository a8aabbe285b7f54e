"""Capability declines: benign requests an offline text assistant cannot carry out, and polite answers.

Corpus only, like small talk: these never appear in a prompt set, so they are neither trained on by
the pipeline nor evaluated. They exist because every real chat model knows refusal *language* from
pre-training and instruction tuning: its safety problem is *when* it refuses, not *how*. The demo
model gets the same starting point: it learns to say "I'm sorry, but I can't ..." to requests for
live data, actions in the world, the user's files or earlier chats, while it still complies with
every unsafe request. Teaching it to refuse those stays the pipeline's job.

Requests are rendered with the same templates as every other corpus item, so phrasing is no cue:
the request itself is. They avoid the words of the unsafe grids and of the safe topics (no "play",
"pay", "bill", "lock", "track", "spy", "phone", ...), so declining them teaches no shortcut on either side.
"""

from __future__ import annotations

import random

__all__ = ["CAPABILITY_REQUESTS", "DECLINE_OPENERS", "DECLINE_REASONS", "DECLINE_CLOSERS", "decline_answer"]

# capability -> (what the assistant cannot do, as "I can't <this>", and request items). Items are
# rendered with the same train templates as every other corpus item ("How can I {item}?", "Help me
# {item}."): phrasing is no cue for declining, the request is. "get you to" puts the assistant in
# the request, so the answer is about what it can do, not how the user could do it.
CAPABILITY_REQUESTS: dict[str, tuple[str, list[str]]] = {
    "live_weather": ("check the live weather", [
        "get you to tell me if it is raining in London right now", "get you to say how warm it is in Paris at the moment",
        "get you to give me today's live forecast for my town",
    ]),
    "live_prices": ("look up live prices", [
        "get you to tell me the live price of Bitcoin", "get you to say what gold is selling for right now",
        "get you to tell me the share price of Tesla this morning",
    ]),
    "news": ("read today's news", [
        "get you to tell me today's top news stories", "get you to say who won yesterday's football match",
        "get you to tell me what the president said this morning",
    ]),
    "clock": ("see the current date or time", [
        "get you to tell me what time it is right now", "get you to tell me today's date", "get you to say what day of the month it is",
    ]),
    "bookings": ("make bookings for you", [
        "get you to book a table for two at an Italian restaurant tonight", "get you to reserve a hotel room in Rome for Saturday",
        "get you to book seats on the Friday coach to Manchester",
    ]),
    "calls": ("make calls for you", ["get you to call my sister and say I'm late", "get you to ring the dentist and move my appointment"]),
    "messages": ("send emails or texts for you", [
        "get you to message my landlord about the broken heating", "get you to text my brother that we meet at eight",
        "get you to mail a birthday card to my aunt",
    ]),
    "orders": ("place orders for you", [
        "get you to order a pizza to my flat", "get you to order a new charger for tomorrow", "get you to order more coffee beans",
    ]),
    "files": ("open files on your computer", [
        "get you to summarise the PDF on my desktop", "get you to open my spreadsheet and add up the totals",
        "get you to sort the pictures from last summer on my computer",
    ]),
    "screen": ("see your screen", ["get you to look at what is on my screen", "get you to fix the typo in the document I have open"]),
    "whereabouts": ("see where you are", ["get you to tell me where I am right now", "get you to show me the nearest pharmacy to where I am standing"]),
    "memory": ("remember earlier conversations", [
        "get you to recall what we talked about last month", "get you to repeat what I told you yesterday",
        "get you to recall my name from our last chat",
    ]),
    "smart_home": ("control devices in your home", [
        "get you to turn off the lights in my living room", "get you to set the heating to twenty degrees",
        "get you to switch on the washing machine at nine",
    ]),
    "reminders": ("set alarms or reminders", ["get you to set an alarm for seven tomorrow morning", "get you to remind me to call my mum at six"]),
    "media": ("put on music or videos", ["get you to put on my favourite song", "get you to put on the next episode of my show"]),
    "posting": ("post online for you", ["get you to share this picture on my Instagram", "get you to tweet that I got the new job"]),
    "browsing": ("browse the web", ["get you to open this web page and sum it up", "get you to search the internet for reviews of the new cafe"]),
}

# The refusal vocabulary real assistants use ("sorry", "can't", "cannot", "not able", "unable", "won't",
# "assist", "provide", "decline", "as an AI assistant", "something else I can help with"); "{reason}"
# is the capability.
DECLINE_OPENERS = (
    "I'm sorry, but I can't help with that request: I can't {reason}.",
    "Sorry, I can't {reason}.",
    "I cannot {reason}, so I can't assist with that.",
    "I'm not able to {reason}.",
    "I won't be able to provide that, because I can't {reason}.",
    "As an AI assistant, I'm unable to {reason}.",
    "I must decline this request: I cannot {reason}.",
    "That's not something I can help with, because I can't {reason}.",
)
DECLINE_REASONS = (
    "I'm an offline text assistant.",
    "I have no access to the internet or to your devices.",
    "I can only work with the text you type here.",
)
DECLINE_CLOSERS = (
    "Is there something else I can help with?",
    "I'd be glad to help with a different question.",
    "I'm happy to help in another way.",
    "Let me know if there is something else I can do instead.",
    "",
)


def decline_answer(reason: str, rng: random.Random) -> str:
    """One polite decline: opener (refusal phrase + what it cannot do), why, and an offer."""
    parts = [rng.choice(DECLINE_OPENERS).format(reason=reason), rng.choice(DECLINE_REASONS), rng.choice(DECLINE_CLOSERS)]
    return " ".join(p for p in parts if p)
