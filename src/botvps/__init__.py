"""botvps: harden a VPS for self-hosted crypto trading bots, prove it, keep proving it."""

__version__ = "0.1.0"
