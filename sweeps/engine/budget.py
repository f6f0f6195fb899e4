"""Spend limits in training tokens (and money, via a price per million tokens).

Tuning is billed by training tokens x epochs, which is known before a job is submitted, so a
trial is checked before it spends anything. Jobs in flight count as already spent
(committed): a sweep never starts a job the budget could not pay for if every job in flight
ran to its end.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeps.config.schema import BudgetConfig


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """The answer to "may this trial start?"; ``reason`` says why not, for the user."""

    fits: bool
    reason: str = ""


def token_limit(config: BudgetConfig) -> float | None:
    """The tightest cap in training tokens (a money cap turned into tokens), or None."""
    limits: list[float] = []
    if config.max_training_tokens is not None:
        limits.append(float(config.max_training_tokens))
    if config.max_cost is not None and config.price_per_million_tokens:
        limits.append(config.max_cost / config.price_per_million_tokens * 1e6)
    return min(limits) if limits else None


def cost_of(tokens: float, config: BudgetConfig) -> float | None:
    """What ``tokens`` training tokens cost, when a price is configured."""
    if config.price_per_million_tokens is None:
        return None
    return tokens / 1e6 * config.price_per_million_tokens


def estimate_tokens(tokens_per_epoch: int, epochs: int) -> int:
    """Training tokens a job of ``epochs`` epochs is billed for."""
    return tokens_per_epoch * epochs


def actual_tokens(
    *, reported: int | None, estimate: int, epochs_completed: int, epochs: int
) -> int:
    """Tokens a finished job used: what the service reported, else the estimate scaled by
    the epochs that ran (a pruned or failed job stops early)."""
    if reported is not None:
        return reported
    if epochs <= 0:
        return 0
    return round(estimate * min(epochs_completed, epochs) / epochs)


def check_trial(
    config: BudgetConfig, *, estimate: int, spent: float, committed: float
) -> BudgetCheck:
    """May a trial of ``estimate`` tokens start, given what is spent and committed?"""
    limit = token_limit(config)
    if limit is None:
        return BudgetCheck(fits=True)
    left = limit - spent - committed
    if estimate <= left + 1e-6:
        return BudgetCheck(fits=True)
    return BudgetCheck(fits=False, reason=_describe(config, estimate, spent, committed, limit))


def _describe(
    config: BudgetConfig, estimate: int, spent: float, committed: float, limit: float
) -> str:
    text = (
        f"budget: the next trial needs about {estimate:,} training tokens but only "
        f"{max(0.0, limit - spent - committed):,.0f} of {limit:,.0f} are left "
        f"({spent:,.0f} spent, {committed:,.0f} committed to jobs in flight)"
    )
    price = config.price_per_million_tokens
    if config.max_cost is not None and price is not None:
        text += f"; max_cost {config.max_cost:g} at {price:g} per million tokens"
    return text
