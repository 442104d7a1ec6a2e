"""LLM judges for the study's pairwise questions (`extes judge`); see docs/judge.md.

The judge asks the participants' per-aspect questions of any OpenAI-compatible model, in both
orders (position swap), parses strictly, and journals every answer so a rerun never pays twice.
"""

from extes.judge.core import (
    DEFAULT_ASPECTS,
    PROMPT_VERSION,
    Aspect,
    Judge,
    JudgeResult,
    PairItem,
    combine_orders,
    judge_pairs,
    load_prompt,
    parse_verdict,
)

__all__ = [
    "DEFAULT_ASPECTS",
    "PROMPT_VERSION",
    "Aspect",
    "Judge",
    "JudgeResult",
    "PairItem",
    "combine_orders",
    "judge_pairs",
    "load_prompt",
    "parse_verdict",
]
