"""Token prices, the pre-run estimate and the hard budget cap.

The cap is enforced before sending: a request reserves its worst case (estimated prompt tokens +
max_tokens at the model's prices); if spent + reserved + worst case would pass --max-cost, it is
not sent and the run stops cleanly. When the response arrives the reservation is replaced by the
real cost from the reported usage. So the money spent never passes the cap, as long as the server
honours max_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from extes.config import read_mapping

# USD per 1M tokens (input, output). Defaults only: providers change prices; pass --prices FILE
# (JSON or YAML {model: {"input": x, "output": y}}) or --price-in/--price-out to be exact.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


@dataclass(frozen=True)
class Price:
    input_per_m: float
    output_per_m: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6


def load_prices(path: str | Path) -> dict[str, tuple[float, float]]:
    path = Path(path)
    data = read_mapping(path, "prices")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of model -> {{input, output}} USD per 1M tokens")
    out = {}
    for model, p in data.items():
        if not isinstance(p, dict) or not {"input", "output"} <= set(p):
            raise ValueError(f"{path}: model {model!r}: expected {{'input': USD, 'output': USD}} per 1M tokens")
        try:
            out[str(model)] = (float(p["input"]), float(p["output"]))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: model {model!r}: prices must be numbers") from None
    return out


def price_for(model: str, prices: dict[str, tuple[float, float]] | None = None,
              price_in: float | None = None, price_out: float | None = None) -> Price | None:
    """Explicit flags win, then the prices file, then the defaults (also for dated model names such
    as gpt-4o-mini-2024-07-18). None when unknown."""
    if price_in is not None or price_out is not None:
        return Price(price_in or 0.0, price_out or 0.0)
    table = dict(DEFAULT_PRICES)
    table.update(prices or {})
    if model in table:
        return Price(*table[model])
    for name in sorted(table, key=len, reverse=True):
        if model.startswith(name + "-"):
            return Price(*table[name])
    return None


class BudgetExceeded(Exception):
    pass


class Budget:
    def __init__(self, price: Price | None, max_cost: float | None, spent: float = 0.0):
        if max_cost is not None and price is None:
            raise ValueError("--max-cost needs a price for the model: pass --price-in/--price-out or --prices")
        if max_cost is not None and max_cost < 0:
            raise ValueError(f"--max-cost must be >= 0, got {max_cost}")
        self.price = price or Price(0.0, 0.0)
        self.max_cost = max_cost
        self.spent = spent
        self.reserved = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.stopped = False

    def worst_case(self, est_prompt_tokens: int, max_tokens: int) -> float:
        return self.price.cost(est_prompt_tokens, max_tokens)

    def reserve(self, amount: float) -> bool:
        """True if `amount` fits under the cap (and is now reserved); False stops the run."""
        if self.max_cost is not None and self.spent + self.reserved + amount > self.max_cost + 1e-12:
            self.stopped = True
            return False
        self.reserved += amount
        return True

    def release(self, amount: float) -> None:
        self.reserved = max(0.0, self.reserved - amount)

    def charge(self, prompt_tokens: int, completion_tokens: int, reserved: float = 0.0) -> float:
        cost = self.price.cost(prompt_tokens, completion_tokens)
        self.release(reserved)
        self.spent += cost
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        return cost


@dataclass
class Estimate:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    worst_case_cost: float

    def describe(self, model: str, max_cost: float | None) -> str:
        cap = f"; cap --max-cost ${max_cost:.2f}" if max_cost is not None else ""
        return (f"estimate for {model}: ~{self.requests} requests, ~{self.prompt_tokens:,} prompt + "
                f"~{self.completion_tokens:,} completion tokens, ~${self.cost:.2f} "
                f"(worst case ${self.worst_case_cost:.2f} if every reply hits max_tokens){cap}")


def estimate_run(n_needed: int, avg_prompt_tokens: int, avg_completion_tokens: int, max_tokens: int,
                 price: Price | None, acceptance: float = 0.8) -> Estimate:
    """Expected requests = needed / expected acceptance rate."""
    requests = int(-(-n_needed // 1) / max(acceptance, 1e-3) + 0.999)
    pt = requests * avg_prompt_tokens
    ct = requests * avg_completion_tokens
    p = price or Price(0.0, 0.0)
    return Estimate(requests, pt, ct, p.cost(pt, ct), p.cost(pt, requests * max_tokens))
