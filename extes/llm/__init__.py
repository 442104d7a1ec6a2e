"""The LLM layer: what the self-chat builder, the LLM judge and the judge verb share.

`client` (an OpenAI-compatible client with rate limits, retries and backoff), `budget` (prices and a
spending cap checked before each request) and `journal` (the crash-safe append-only JSONL file).
"""
