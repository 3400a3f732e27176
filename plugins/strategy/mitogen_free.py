"""Mitogen's free strategy, from the pinned mitogen package (opt-in: BOTVPS_MITOGEN=1, see the README)."""

from ansible_mitogen.plugins.strategy.mitogen_free import StrategyModule  # noqa: F401
