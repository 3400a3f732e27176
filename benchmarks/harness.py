"""Benchmark the foundation: prints JSON with image build (cold, cached), boot-to-SSH,
first converge, idempotent re-run and the changed count on re-run.

    .venv/bin/python benchmarks/harness.py [--suite bookworm] [--cold]

--cold builds the image in a temporary BOTVPS_HOME (the real cache is left alone).
Numbers, not pass/fail: speed targets are judged by reading them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from botvps import paths, provision
from botvps.vm import image, inventory, machine


def timed(fn):
    started = time.monotonic()
    value = fn()
    return value, round(time.monotonic() - started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--cold", action="store_true", help="also time a build without the cache")
    args = parser.parse_args()
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    numbers: dict[str, object] = {"suite": args.suite, "accel": None}
    if args.cold:
        real_home = os.environ.get("BOTVPS_HOME")
        with tempfile.TemporaryDirectory(prefix="botvps-bench-") as tmp:
            os.environ["BOTVPS_HOME"] = tmp
            _, numbers["image_build_cold_s"] = timed(lambda: image.build(args.suite, log=log))
        if real_home is None:
            os.environ.pop("BOTVPS_HOME")
        else:
            os.environ["BOTVPS_HOME"] = real_home
    image.ensure(args.suite, log=log)
    _, numbers["image_cached_s"] = timed(lambda: image.ensure(args.suite, log=log))
    name = "bench-" + image.resolve_suite(args.suite)
    machine.down(name)
    try:
        vm, numbers["boot_to_ssh_s"] = timed(lambda: machine.up(name, suite=args.suite, log=log))
        numbers["accel"] = vm.accel
        inv = inventory.write(vm, paths.home() / "bench" / name)
        first = provision.provision(inv, echo=False)
        numbers["first_converge_s"] = round(first.seconds, 1)
        numbers["first_converge_changed"] = first.changed
        again = provision.provision(inv, echo=False)
        numbers["idempotent_rerun_s"] = round(again.seconds, 1)
        numbers["rerun_changed"] = again.changed
        numbers["ok"] = first.returncode == 0 and again.returncode == 0
    finally:
        machine.down(name)
    print(json.dumps(numbers, indent=2))
    return 0 if numbers.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
