#!/usr/bin/python
# -*- coding: utf-8 -*-
"""botvps.infra.public_ipv4: the IPv4 address the world sees this host's traffic come from."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: public_ipv4
short_description: Ask a "what is my address" service which IPv4 address this host's traffic comes from
description:
  - One GET of O(url) from the host, over IPv4 only and from O(source_ipv4), as the bots' packets leave
    (the address and family a cloud's NAT translates); redirects are not followed.
  - The answer is the address alone in plain text (api.ipify.org, icanhazip.com, ifconfig.me/ip) or JSON
    with an C(ip) field (api.ipify.org?format=json).
  - Read-only; runs in check mode too.
options:
  url:
    description: The service, http or https.
    type: str
    required: true
  source_ipv4:
    description: Send from this address (V('') lets the kernel choose).
    type: str
    default: ""
  timeout:
    description: Seconds for the whole request.
    type: int
    default: 10
author: [botvps]
"""

RETURN = r"""
address: {description: The IPv4 address the service saw, type: str, returned: success}
source_ipv4: {description: The address the request was sent from, type: str, returned: always}
"""

import ipaddress
import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.botvps.infra.plugins.module_utils.keyaudit import HttpRequest, TransientError, urllib_send


def parse_answer(body: bytes) -> str:
    """The IPv4 address in a service's answer; ValueError naming what came instead."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("ip", "")).strip()
        except (ValueError, AttributeError):
            raise ValueError(f"an unreadable JSON answer ({text[:60]!r})") from None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"no IP address in the answer ({text[:60]!r})") from None
    if address.version != 4:
        raise ValueError(f"an IPv6 address ({address}) although the request went out over IPv4")
    return str(address)


def ask(url: str, source_ipv4: str, timeout: float) -> str:
    """The address ``url`` saw; ValueError with the reason when there is none."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http or https URL")
    try:
        response = urllib_send(HttpRequest("GET", url, {"Accept": "text/plain, application/json"},
                                           source_ipv4=source_ipv4 or None), timeout)
    except (TransientError, OSError) as exc:
        raise ValueError(f"{url} could not be reached over IPv4 from {source_ipv4 or 'this host'}: {exc}") from None
    if response.status != 200:
        raise ValueError(f"{url} answered HTTP {response.status}")
    try:
        return parse_answer(response.body)
    except ValueError as exc:
        raise ValueError(f"{url} gave {exc}") from None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "source_ipv4": {"type": "str", "default": ""},
            "timeout": {"type": "int", "default": 10},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        address = ask(p["url"], p["source_ipv4"], p["timeout"])
    except ValueError as exc:
        module.fail_json(msg=str(exc), source_ipv4=p["source_ipv4"])
    module.exit_json(changed=False, address=address, source_ipv4=p["source_ipv4"])


if __name__ == "__main__":
    main()
