"""`invoke demo`: boot a throwaway VPS, provision it as a real one would be, verify it, show how to connect."""

from __future__ import annotations

from botvps import paths, provision, verify
from botvps.vm import inventory, machine


def run(name: str = "demo", suite: str = "bookworm") -> int:
    try:
        vm = machine.load(name)
        if not vm.running():
            raise machine.VMError("not running")
        print(f"demo: reusing the running VM {name}")
    except machine.VMError:
        vm = machine.up(name, suite=suite, user="root", forwards=(8080,))
    inv = inventory.write(vm, paths.home() / "demo" / name)
    print(f"demo: provisioning {name} with {inv}/hosts.yml (the VM was handed over as root with a key)")
    result = provision.provision(inv)
    if result.returncode != 0:
        print("demo: provisioning failed; the VM stays up for a look: invoke vm.ssh " + name)
        return result.returncode
    print("demo: verifying the server's live state ...")
    # The lockout drills re-provision the server several times: the test suite runs them, the demo skips them.
    checks = verify.run(inv, vm_name=name, extra=["--ignore", str(verify.SUITE / "test_lockout.py")])
    print()
    print(f"demo: provisioned in {result.seconds:.0f} s, {result.changed} changes; checks "
          + ("passed" if checks == 0 else "FAILED (see above)"))
    print(f"demo: connect as the admin:  ssh -i {vm.key_file} -p {vm.ssh_port} ops@127.0.0.1")
    print(f"      or: invoke vm.ssh {name} --user ops      console (no SSH): invoke vm.console {name} 'CMD'")
    print(f"      re-run: invoke provision --inventory {inv}      stop: invoke vm.down {name}")
    return checks
