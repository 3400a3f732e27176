"""Fixtures of the VM tests (see vmlab.py for the lab they share); opt-in: BOTVPS_VM_TESTS=1.

molecule's verifier runs these modules in one pytest session with tests/host: tests/vm is a package
(its conftest is ``vm.conftest``), so neither directory's ``from conftest import`` sees the other's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from botvps import provision
from botvps.vm import machine

from .vmlab import (DISPOSABLE_PREFIXES, LAB_VM, PASSWORD_FILE, Lab, log, sntp_server, sync_clock, vault_values,
                   write_inventory)


# The order these modules run in, after every other test of the session: molecule's verifier passes them
# together with tests/host (in an order of its own), and the rebuild test destroys the VM the others check.
LAST = ("test_drift_vm.py", "test_rebuild_vm.py")


@pytest.hookimpl(trylast=True)  # after tests/host's own ordering (its fault drills run late too)
def pytest_collection_modifyitems(session, config, items) -> None:
    here = Path(__file__).resolve().parent

    def rank(item) -> int:
        path = Path(str(item.fspath)).resolve()
        return LAST.index(path.name) + 1 if path.parent == here and path.name in LAST else 0

    items.sort(key=rank)  # stable: everything else keeps its order


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Iterator[Lab]:
    if os.environ.get("BOTVPS_VM_TESTS") != "1":
        pytest.skip("set BOTVPS_VM_TESTS=1 to run the VM tests")
    name = os.environ.get("BOTVPS_VM_NAME")
    tmp = tmp_path_factory.mktemp("vm-lab")
    sntp = sntp_server()
    started = time.monotonic()
    owned = not name
    try:
        if name:
            if not name.startswith(DISPOSABLE_PREFIXES):
                pytest.fail(f"BOTVPS_VM_NAME={name}: the VM tests change and destroy their VM; "
                            f"use one named {' or '.join(p + '*' for p in DISPOSABLE_PREFIXES)}")
            vm = machine.load(name)
            inv = write_inventory(vm, tmp / "inventory")
        else:
            vm = machine.up(LAB_VM, suite="bookworm", user="root", forwards=(8080, 2222), log=log)
            inv = write_inventory(vm, tmp / "inventory")
            result = provision.provision(inv, vault_password_file=str(PASSWORD_FILE), echo=False)
            assert result.returncode == 0, result.output[-3000:]
        the_lab = Lab(vm, inv, PASSWORD_FILE, vault_values(), ["alpha", "beta"], tmp, owned)
        sync_clock(the_lab)
        log(f"\nlab: {vm.name} ready in {time.monotonic() - started:.0f} s ({'booted here' if owned else 'molecule'})")
        yield the_lab
    finally:
        if owned:
            machine.down(LAB_VM)
        if sntp is not None:
            sntp.__exit__(None, None, None)
