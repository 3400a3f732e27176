"""Command line for the throwaway VMs: ``botvps-vm up|build|down|list|ssh|console|save|restore``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from botvps.vm import machine


def _up(args: argparse.Namespace) -> int:
    vm = machine.up(
        args.name, suite=args.suite, user=args.user, forwards=tuple(args.forward),
        memory_mb=args.memory, log=lambda msg: print(msg, file=sys.stderr), apt_cache=args.apt_cache,
        snapshot=args.snapshot,
    )
    if args.json:
        print(json.dumps(_describe(vm)))
    return 0


def _describe(vm: machine.VM) -> dict:
    return {**asdict(vm), "running": vm.running(), "key_file": str(vm.key_file),
            "known_hosts": str(vm.known_hosts), "directory": str(vm.directory),
            "inventory": vm.inventory_vars()}


def _down(args: argparse.Namespace) -> int:
    """Stop and remove VMs; a VM that is already gone is not an error (molecule's destroy after a test destroyed it)."""
    if args.all:
        for name in machine.down_all(args.prefix or ""):
            print(f"stopped and removed {name}", file=sys.stderr)
        return 0
    for name in args.names:
        print(f"stopped and removed {name}" if machine.down(name) else f"{name}: not running (removed what was left)",
              file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    vms = machine.list_vms()
    if args.json:
        print(json.dumps([_describe(vm) for vm in vms]))
        return 0
    for vm in vms:
        state = "running" if vm.running() else "stopped"
        print(f"{vm.name:24} {vm.suite:9} {state:8} ssh 127.0.0.1:{vm.ssh_port} user={vm.user} accel={vm.accel}")
    return 0


def _ssh(args: argparse.Namespace) -> int:
    vm = machine.load(args.name)
    command = vm.ssh_command(args.user) + args.command
    os.execvp(command[0], command)
    return 1  # not reached


def _build(args: argparse.Namespace) -> int:
    """Build the images of these suites now (each only if not cached), so that a later `up` only boots."""
    from botvps.vm import image

    for suite in args.suites:
        image.ensure(suite, log=lambda msg: print(msg, file=sys.stderr))
    return 0


def _save(args: argparse.Namespace) -> int:
    print(f"{args.name}: saved {args.tag!r} in {machine.load(args.name).save(args.tag):.1f} s", file=sys.stderr)
    return 0


def _restore(args: argparse.Namespace) -> int:
    print(f"{args.name}: restored {args.tag!r} in {machine.load(args.name).restore(args.tag):.1f} s", file=sys.stderr)
    return 0


def _console(args: argparse.Namespace) -> int:
    result = machine.load(args.name).console().run(" ".join(args.command))
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.exit_code


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="botvps-vm", description=__doc__)
    sub = root.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="build (if needed) and boot a VM")
    up.add_argument("name")
    up.add_argument("--suite", default="bookworm", help="bookworm|trixie (or debian12|debian13)")
    up.add_argument("--user", default="root", choices=machine.HANDOVER_USERS, help="how the provider hands it over")
    up.add_argument("--forward", type=int, action="append", default=[], help="extra guest TCP port to forward")
    up.add_argument("--memory", type=int, default=1024, help="MiB")
    up.add_argument("--apt-cache", action="store_true", default=None,
                    help="use the harness' apt-cacher-ng on 127.0.0.1:3142 (also BOTVPS_APT_CACHE=1)")
    up.add_argument("--snapshot", metavar="TAG", help="save the booted VM (disk and memory) as snapshot TAG")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=_up)
    build = sub.add_parser("build", help="build the Debian images now (if not cached), without booting")
    build.add_argument("suites", nargs="+", metavar="SUITE", help="bookworm|trixie (or debian12|debian13)")
    build.set_defaults(func=_build)
    save = sub.add_parser("save", help="save a running VM whole (disk and memory) as an internal snapshot")
    save.add_argument("name")
    save.add_argument("tag")
    save.set_defaults(func=_save)
    restore = sub.add_parser("restore", help="put a VM back as it was when a snapshot was saved")
    restore.add_argument("name")
    restore.add_argument("tag")
    restore.set_defaults(func=_restore)
    down = sub.add_parser("down", help="stop VMs and delete their disks")
    down.add_argument("names", nargs="*")
    down.add_argument("--all", action="store_true")
    down.add_argument("--prefix", help="with --all: only VMs whose name starts with this")
    down.set_defaults(func=_down)
    lst = sub.add_parser("list", help="list VMs")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    ssh = sub.add_parser("ssh", help="ssh into a VM")
    ssh.add_argument("name")
    ssh.add_argument("--user")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=_ssh)
    console = sub.add_parser("console", help="run a command as root through the guest agent (no SSH)")
    console.add_argument("name")
    console.add_argument("command", nargs=argparse.REMAINDER)
    console.set_defaults(func=_console)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (machine.VMError, ValueError, PermissionError, RuntimeError) as err:
        print(f"botvps-vm: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
