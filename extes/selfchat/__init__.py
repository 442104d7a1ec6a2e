"""Building ExTES by LLM self-chat (`extes build`, `extes review`); see docs/build.md.

prompt (versioned template) -> client (rate limits, retries) -> parse -> validate + dedup ->
journal (append-only, crash-safe) -> state (derived from the journal) -> export / review.
The client, the budget and the journal live one layer down, in `extes.llm` (the judge uses them too).
"""
