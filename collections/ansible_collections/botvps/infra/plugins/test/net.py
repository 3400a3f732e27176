"""Jinja tests for select/reject: open_network (0.0.0.0/0, ::/0) and hardware_key (FIDO2)."""

from __future__ import annotations

from ansible_collections.botvps.infra.plugins.filter.net import is_hardware_key, is_open_network


class TestModule:
    def tests(self) -> dict:
        return {"open_network": is_open_network, "hardware_key": is_hardware_key}
