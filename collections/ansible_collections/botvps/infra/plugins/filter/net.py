"""Filters botvps' roles use for addresses and SSH public keys (stdlib only)."""

from __future__ import annotations

import base64
import ipaddress
import struct

ACCEPTED_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
HARDWARE_KEY_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
MIN_RSA_BITS = 3072


def ip_in_networks(address: str, networks: list[str]) -> bool:
    """True when ``address`` lies in any of ``networks`` (IPv4-mapped IPv6 counts as IPv4)."""
    ip = ipaddress.ip_address(str(address).strip())
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(str(n), strict=False) for n in networks if
               ipaddress.ip_network(str(n), strict=False).version == ip.version)


def egress_ipv4(static_ipv4: str, declared: str, addresses: list[str], default_ipv4: str) -> str:
    """The address the bots' packets leave the host's interface with.

    ``declared`` (the host variable egress_ipv4) when set; else ``static_ipv4`` when the host has it on an
    interface (the exchange sees the address the host sends from); else the source address of the default
    route (``default_ipv4``): on a NAT cloud (AWS, GCP, Oracle, a DigitalOcean Reserved IP) the interface
    has a private address and the cloud translates it to static_ipv4 on the way out. '' without static_ipv4.
    """
    if str(declared or "").strip():
        return str(declared).strip()
    static = str(static_ipv4 or "").strip()
    if not static:
        return ""
    return static if static in [str(a) for a in addresses or []] else str(default_ipv4 or "").strip()


def ui_ports(bots: list[dict] | None) -> list[int]:
    """The web UI ports (ui_port) of the bots that are not retired, sorted: what sshd may forward to (PermitOpen)."""
    return sorted({int(b["ui_port"]) for b in bots or []
                   if isinstance(b, dict) and b.get("ui_port") and b.get("state", "present") != "absent"})


def is_open_network(network: str) -> bool:
    """True for 0.0.0.0/0 and ::/0: 'anywhere'."""
    return ipaddress.ip_network(str(network), strict=False).prefixlen == 0


def _read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack(">I", blob[offset:offset + 4])
    return blob[offset + 4:offset + 4 + length], offset + 4 + length


def ssh_key_problem(line: str) -> str:
    """'' for an acceptable public key line, else what is wrong with it and how to fix it."""
    text = str(line).strip()
    if "PRIVATE KEY" in text:
        return "this is a PRIVATE key: give the public key (the .pub file) instead"
    parts = text.split()
    if len(parts) < 2:
        return "not an OpenSSH public key line ('TYPE BASE64 [comment]')"
    key_type, data = parts[0], parts[1]
    if key_type == "ssh-dss":
        return "DSA keys are refused: make an ed25519 key (ssh-keygen -t ed25519) or a FIDO2 key (-t ed25519-sk)"
    if key_type.startswith("ecdsa-sha2-"):
        return "plain ECDSA keys are not accepted: use ed25519, RSA >= 3072 bits, or a FIDO2 hardware key"
    if key_type not in ACCEPTED_KEY_TYPES:
        return f"unknown key type {key_type!r}: use ssh-ed25519, ssh-rsa (>= 3072 bits) or a FIDO2 key"
    try:
        blob = base64.b64decode(data, validate=True)
        embedded, offset = _read_string(blob, 0)
    except (ValueError, struct.error):
        return "the key data is not valid base64 / OpenSSH key data: copy the whole .pub line"
    if embedded.decode(errors="replace") != key_type:
        return f"the key data says {embedded.decode(errors='replace')!r} but the line says {key_type!r}"
    if key_type == "ssh-rsa":
        _exponent, offset = _read_string(blob, offset)
        modulus, _ = _read_string(blob, offset)
        bits = int.from_bytes(modulus, "big").bit_length()
        if bits < MIN_RSA_BITS:
            return f"RSA key of {bits} bits: at least {MIN_RSA_BITS} are required (ssh-keygen -t rsa -b 4096, or ed25519)"
    return ""


def is_hardware_key(line: str) -> bool:
    parts = str(line).split()
    return bool(parts) and parts[0] in HARDWARE_KEY_TYPES


def key_id(line: str) -> str:
    """'TYPE BASE64' without the comment, to compare keys."""
    return " ".join(str(line).split()[:2])


class FilterModule:
    def filters(self) -> dict:
        return {
            "ip_in_networks": ip_in_networks,
            "is_open_network": is_open_network,
            "egress_ipv4": egress_ipv4,
            "ui_ports": ui_ports,
            "ssh_key_problem": ssh_key_problem,
            "is_hardware_key": is_hardware_key,
            "key_id": key_id,
        }
