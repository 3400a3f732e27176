"""Keep secret values out of the report, whatever the host sent.

The probe never reads a secrets file and keeps only keyaudit's verdicts from the bots' journals,
but the log review carries free text an operator or an attacker wrote (sudo command lines, user
names tried over SSH, apt command lines). Before anything is parsed, every string of the gathered
document goes through :func:`redact`:

- every secret value the inventory holds (its vault, ``botvps_secrets``, password-like variables;
  see :func:`botvps.validate.load_inventory`) is replaced by ``***`` (:meth:`Redactor.walk`);
- in free text (sudo and apt command lines, names tried over SSH: :meth:`Redactor.text`), anything
  that looks like an assignment to a secret-named variable (``BINANCE_SECRET=...``, ``api_key: ...``)
  or a secret-named option (``--api-key X``, ``--password=X``) keeps its name and loses its value.
  (Not in structured output: ``systemd-analyze`` names ``PrivateTmp=`` and ``KeyringMode=``.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
MIN_SECRET_LEN = 4  # shorter inventory values would mask ordinary words
_NAME = r"[A-Za-z0-9_.-]*(?:KEY|SECRET|TOKEN|PASS|PASSWD|PASSWORD|PASSPHRASE|CREDENTIALS?|PRIVATE)[A-Za-z0-9_.-]*"
ASSIGNMENT = re.compile(rf"(?i)\b({_NAME})(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s;&|]+)")
OPTION = re.compile(rf"(?i)(--{_NAME})(=|\s+)(\"[^\"]*\"|'[^']*'|[^\s;&|-][^\s;&|]*)")


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)

    def known(self, value: str) -> str:
        """``value`` with every inventory secret masked."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def text(self, value: str) -> str:
        """Free text: inventory secrets and secret-looking assignments and options masked."""
        value = ASSIGNMENT.sub(lambda m: m.group(1) + m.group(2) + MASK, self.known(value))
        return OPTION.sub(lambda m: m.group(1) + m.group(2) + MASK, value)

    def walk(self, value: Any) -> Any:
        """A copy of ``value`` (JSON-like) with every inventory secret masked in every string, keys too."""
        if isinstance(value, str):
            return self.known(value)
        if isinstance(value, dict):
            return {self.walk(k) if isinstance(k, str) else k: self.walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.walk(item) for item in value]
        return value
