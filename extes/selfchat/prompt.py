"""The self-chat prompt: one example dialogue in, one new dialogue of a given scenario out.

The wording is ours; the requirements follow the ExTES paper: the 16 strategies with their
definitions, an example in the dataset's own JSON format, a specific made-up situation of the
requested scenario written as the description, a natural real-life chat, and the same dict format
back (`scene` unchanged, `description`, `content` with "User" dicts and "AI" dicts carrying
"AI Strategy"). Change the text -> bump TEMPLATE_VERSION; every journal record stores it.
"""

from __future__ import annotations

import hashlib
import json

from extes.dialogue import Dialogue
from extes.taxonomy import STRATEGIES

TEMPLATE_VERSION = "extes-selfchat-v1"

# Markers the scripted test server (and anyone debugging a journal) can find the parts by.
EXAMPLE_BEGIN = "<example>"
EXAMPLE_END = "</example>"

SYSTEM = (
    "You write realistic example conversations for a dataset that teaches AI assistants to give "
    "emotional support. You answer with one JSON object and nothing else."
)

_INSTRUCTIONS = """\
Below is an example conversation between a person who is struggling (\"User\") and a supportive \
AI companion (\"AI\"). Every AI turn is labelled with the support strategy it uses, chosen from \
this list:

{strategies}

{begin}
{example}
{end}

Now write a NEW conversation for the scenario type "{scene}".

Requirements:
1. First invent one specific, random situation of this scenario type: a particular person, what \
happened, when, and who else is involved. Write it as the "description" in one to three \
sentences. It must be concrete, not a restatement of the scenario name, and different from the \
example's situation.
2. Make the chat feel like a real conversation between two people: the user opens, speaks in \
their own voice and reveals details gradually; the AI listens, asks, validates and only later \
suggests. Keep each turn short (one to four sentences).
3. Alternate strictly between "User" and "AI", starting with "User". Write at least {min_turns} \
utterances in total (roughly {low} to {high} is typical).
4. Every AI turn has an "AI Strategy" whose value is exactly one name from the list above.
5. Do not copy sentences from the example.
6. Return the same format as the example: a JSON object with "scene" (exactly "{scene}"), \
"description", and "content" (a list of {{"User": "..."}} and {{"AI": "...", "AI Strategy": "..."}} \
objects). Output only the JSON object.
"""


def strategy_list() -> str:
    return "\n".join(f"- {s.name}: {s.definition}" for s in STRATEGIES)


def example_json(example: Dialogue) -> str:
    """The example in ExTES JSON, one turn per line (readable, and fewer tokens than indent=...)."""
    d = example.to_extes()
    turns = ",\n".join("  " + json.dumps(t, ensure_ascii=False) for t in d["content"])
    return (f'{{\n "scene": {json.dumps(d["scene"], ensure_ascii=False)},\n'
            f' "description": {json.dumps(d["description"], ensure_ascii=False)},\n'
            f' "content": [\n{turns}\n ]\n}}')


def build_messages(example: Dialogue, scene: str, min_turns: int = 8) -> list[dict[str, str]]:
    """The chat messages for one generation request."""
    user = _INSTRUCTIONS.format(
        strategies=strategy_list(),
        begin=EXAMPLE_BEGIN,
        example=example_json(example),
        end=EXAMPLE_END,
        scene=scene,
        min_turns=min_turns,
        low=max(min_turns, 12),
        high=max(min_turns, 12) + 8,
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def prompt_sha(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters per token for English), used for budgets and
    the token-per-minute limiter before the server reports real usage."""
    return max(1, (len(text) + 3) // 4)


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    return sum(estimate_tokens(m["content"]) + 4 for m in messages)
