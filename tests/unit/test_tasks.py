"""The invoke tasks as an operator types them (tasks.py is a thin layer: its words must parse)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "BOTVPS_HOME": str(home)},
                          timeout=60)


def test_vm_down_takes_the_name_as_the_demo_prints_it(tmp_path: Path) -> None:
    # `invoke demo` ends with "stop: invoke vm.down demo"; the README says `vm.down NAME`.
    result = invoke("vm.down", "nosuchvm", home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nosuchvm: not running" in result.stdout + result.stderr


def test_every_vm_is_stopped_with_vm_down_all(tmp_path: Path) -> None:
    # The README's other spelling: invoke cannot leave a positional NAME out, so `vm.down --all` never parsed.
    result = invoke("vm.down-all", home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
