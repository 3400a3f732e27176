"""Mitogen's linear strategy, from the pinned mitogen package (opt-in: BOTVPS_MITOGEN=1, see the README)."""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
