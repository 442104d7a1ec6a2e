"""Start the study app on the first round's engine: the baseline of `bench/load.py --baseline`.

    .venv/bin/python bench/first_round.py --engine=transformers --engine-in-process --max-batch=16 [app.py's options]

Issue 12 measured the first round's engine (commit a0c2671) at 30 tokens/s and asks for 5x that. That
engine is the transformers path that `--engine=transformers` still runs, minus what issue 12 changed in it:
- sampling: row by row, with a sort of the whole vocabulary for top-p (now `sample_rows`, batched);
- detokenisation: the whole reply decoded again after every token (now `extes.models.detok`, incremental);
- batch size: at most 16 rows, the pool's default then (32 now), and the engine in the web server's
  process; bench/load.py passes those two as the options above.
This launcher puts the first two back, with the first round's code (the two functions below are
a0c2671's, verbatim apart from names), then runs app.py's main with its arguments.
Kept from today: the end-of-turn hold (no empty replies; a correctness fix that costs one masked write per
step) and everything outside the engine, so the two runs differ only in the engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import extes.models.scheduler as scheduler  # noqa: E402
from extes.models.arms import GenerationSettings  # noqa: E402
from extes.models.detok import IncrementalDecoder  # noqa: E402


def first_round_sample(logits, settings: GenerationSettings, seen, generator) -> int:
    """One token from 1-D logits with repetition penalty (over prompt + output), temperature and top-p."""
    import torch

    scores = logits.float()
    if settings.repetition_penalty != 1.0 and seen is not None and seen.numel():
        picked = scores.gather(0, seen)
        picked = torch.where(picked < 0, picked * settings.repetition_penalty, picked / settings.repetition_penalty)
        scores = scores.scatter(0, seen, picked)
    if settings.temperature == 0:
        return int(scores.argmax())
    scores = scores / settings.temperature
    probs = torch.softmax(scores, dim=-1)
    if settings.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        drop = (cum - sorted_p) > settings.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def first_round_sample_rows(logits, settings: list[GenerationSettings], seen: list, generators: list) -> list[int]:
    """The first round's decode step sampled each row on its own: one call per row in a loop."""
    return [first_round_sample(logits[i], settings[i], seen[i], generators[i]) for i in range(len(settings))]


class FullDecoder(IncrementalDecoder):
    """The first round's detokenisation: the whole reply decoded again after each token."""

    def add(self, token: int) -> str:
        self.ids.append(token)
        full = self._decode(self.ids)
        new = full[len(self.text):] if full.startswith(self.text) else ""
        self.text = full
        return new


def install() -> None:
    """Swap the three into the scheduler (extes.models.scheduler looks them up when it runs). This process
    runs only the transformers path (`--engine=transformers`)."""
    scheduler.sample_rows = first_round_sample_rows
    scheduler.sample_one = first_round_sample  # a prompt's first token
    scheduler.IncrementalDecoder = FullDecoder


if __name__ == "__main__":
    install()
    from extes.commands.app_cli import main

    sys.exit(main())
