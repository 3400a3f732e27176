"""Lookup: the source of a host-side program of this collection (plugins/module_utils/NAME).

Everything botvps runs on a host ships from this collection, one way: a role or playbook asks for
``lookup('botvps.infra.hostcode', 'keyaudit.py')`` and installs the text or runs it with
``python3 -c``. No role or playbook reaches into the controller's ``src/``.
"""

from __future__ import annotations

from pathlib import Path

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: hostcode
short_description: the source of one of botvps' host-side programs
description:
  - Returns the text of C(plugins/module_utils/NAME) of the botvps.infra collection, byte for byte.
options:
  _terms:
    description: file names in plugins/module_utils, e.g. keyaudit.py
    required: true
"""

ROOT = Path(__file__).resolve().parents[1] / "module_utils"


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        out = []
        for term in terms:
            path = (ROOT / str(term)).resolve()
            if path.parent != ROOT or not path.is_file():
                raise AnsibleLookupError(f"botvps.infra.hostcode: no host program {term!r} in {ROOT}")
            out.append(path.read_text(encoding="utf-8"))
        return out
