"""Build and cache bootable Debian disk images with mmdebstrap.

An image is a directory holding ``rootfs.qcow2`` (an ext4 filesystem, no partition
table), ``vmlinuz`` and ``initrd.img``; QEMU boots the kernel directly.  Images are
cached by a key over the suite, the package list and this recipe, so a rebuild happens
only when one of those changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from botvps import paths

SUITES = {"bookworm": "12", "trixie": "13"}
ALIASES = {"debian12": "bookworm", "debian13": "trixie", "12": "bookworm", "13": "trixie"}
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
PACKAGES = (
    "linux-image-cloud-amd64",
    "openssh-server",
    "python3",
    "sudo",
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "iproute2",
    "procps",
    "ca-certificates",
    "qemu-guest-agent",
)
DISK_SIZE = "6G"
RECIPE_VERSION = "3"

# Runs once at first boot, like a provider's cloud-init: takes the login user, its
# public key and a password from the kernel command line (botvps.user/key/password).
FIRSTBOOT_SCRIPT = r"""#!/bin/sh
set -eu
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^botvps\.$1=//p" | tail -n 1; }
user=$(arg user)
key=$(arg key | base64 -d)
password=$(arg password)
ssh-keygen -A
# The VM's name (systemd.hostname= on the command line) resolves locally, as cloud-init's manage_etc_hosts does:
# otherwise each sudo spends a DNS round trip failing to resolve it, and warns.
sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1 $(hostname)/" /etc/hosts
if [ "$user" = root ]; then
    home=/root
else
    useradd --create-home --shell /bin/bash --groups sudo "$user"
    echo "$user ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/90-cloud-init-users
    chmod 0440 /etc/sudoers.d/90-cloud-init-users
    home=/home/$user
fi
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
printf '%s\n' "$key" >"$home/.ssh/authorized_keys"
chown "$user:$user" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
[ -z "$password" ] || echo "$user:$password" | chpasswd
touch /var/lib/botvps-firstboot.done
"""

FIRSTBOOT_UNIT = """[Unit]
Description=botvps test VM: provider-style first-boot handover (user, key, password)
ConditionPathExists=!/var/lib/botvps-firstboot.done
Before=ssh.service ssh.socket
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/botvps-firstboot
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Image:
    suite: str
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "rootfs.qcow2"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"


def resolve_suite(name: str) -> str:
    suite = ALIASES.get(name, name)
    if suite not in SUITES:
        known = ", ".join(sorted(set(SUITES) | set(ALIASES)))
        raise ValueError(f"unknown Debian suite {name!r}: use one of {known}")
    return suite


def cache_key(suite: str, packages: tuple[str, ...] = PACKAGES) -> str:
    recipe = json.dumps(
        {
            "suite": suite,
            "packages": sorted(packages),
            "mirror": MIRROR,
            "recipe": RECIPE_VERSION,
            "firstboot": FIRSTBOOT_SCRIPT + FIRSTBOOT_UNIT,
            "disk": DISK_SIZE,
        },
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def cached(suite: str) -> Image | None:
    image = Image(suite, paths.images_dir() / f"{suite}-{cache_key(suite)}")
    if image.disk.exists() and image.kernel.exists() and image.initrd.exists():
        return image
    return None


def ensure(suite: str, log=print) -> Image:
    """Return the cached image for ``suite``, building it first when missing."""
    suite = resolve_suite(suite)
    return cached(suite) or build(suite, log=log)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionError(
            "building a VM image needs root (mmdebstrap in root mode and mkfs.ext4 -d keep "
            "file owners): run this once as root, or with sudo; later runs use the cached image"
        )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _customize(root: Path, suite: str) -> None:
    """Turn the bootstrapped tree into something that boots like a fresh VPS."""
    _write(root / "etc/fstab", "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    _write(root / "etc/hostname", "botvps-vm\n")
    _write(root / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 botvps-vm\n::1 localhost ip6-localhost\n")
    _write(root / "etc/machine-id", "")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    _write(root / "etc/resolv.conf", "nameserver 10.0.2.3\n")
    _write(
        root / "etc/apt/sources.list",
        f"deb {MIRROR} {suite} main\n"
        f"deb {MIRROR} {suite}-updates main\n"
        f"deb {SECURITY_MIRROR} {suite}-security main\n",
    )
    _write(root / "etc/systemd/network/10-dhcp.network", "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n")
    # What cloud-init writes on many providers' images: the toolkit must win over it.
    _write(root / "etc/ssh/sshd_config.d/50-cloud-init.conf", "PasswordAuthentication yes\n", 0o600)
    for key in root.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    _write(root / "usr/local/sbin/botvps-firstboot", FIRSTBOOT_SCRIPT, 0o755)
    _write(root / "etc/systemd/system/botvps-firstboot.service", FIRSTBOOT_UNIT)
    subprocess.run(
        ["chroot", str(root), "systemctl", "enable", "systemd-networkd", "ssh", "botvps-firstboot"],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


def _boot_files(root: Path, dest: Path) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError(f"no kernel or initrd in {root}/boot: did linux-image-cloud-amd64 install?")
    shutil.copy2(kernels[-1], dest / "vmlinuz")
    shutil.copy2(initrds[-1], dest / "initrd.img")


def build(suite: str, log=print) -> Image:
    """Build the image for ``suite`` from Debian's packages into the cache."""
    _require_root()
    from botvps.vm import hostdeps

    hostdeps.ensure()
    suite = resolve_suite(suite)
    final = paths.images_dir() / f"{suite}-{cache_key(suite)}"
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".build-{suite}-", dir=final.parent) as tmp:
        work = Path(tmp)
        root = work / "root"
        log(f"building Debian {SUITES[suite]} ({suite}) image with mmdebstrap ...")
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--mode=root",
                "--variant=apt",
                "--include=" + ",".join(PACKAGES),
                suite,
                str(root),
                MIRROR,
            ],
            check=True,
            stdout=sys.stderr,
            stdin=subprocess.DEVNULL,
        )
        _customize(root, suite)
        out = work / "image"
        out.mkdir()
        _boot_files(root, out)
        raw = work / "rootfs.raw"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw), DISK_SIZE], check=True,
                       stdout=sys.stderr, stdin=subprocess.DEVNULL)
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "rootfs.qcow2")], check=True,
                       stdout=sys.stderr, stdin=subprocess.DEVNULL)
        (out / "image.json").write_text(json.dumps({"suite": suite, "packages": PACKAGES, "key": cache_key(suite)}))
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    log(f"image ready in {time.monotonic() - started:.0f} s: {final}")
    return Image(suite, final)
