"""Tests for the botvps.infra.files module.

Most tests run the module in-process exactly as Ansible feeds it (module args patched in,
result read from stdout); one test runs a real playbook with ansible-playbook -c local.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("ansible")
from ansible.module_utils.testing import patch_module_args  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "collections"
MODULE_PATH = COLLECTIONS / "ansible_collections/botvps/infra/plugins/modules/files.py"
ME = pwd.getpwuid(os.geteuid()).pw_name
MY_GROUP = grp.getgrgid(os.getegid()).gr_name
SECRET = "s3cr3t-api-key-DO-NOT-PRINT"


@pytest.fixture(scope="module")
def files_mod() -> ModuleType:
    spec = importlib.util.spec_from_file_location("botvps_files_module", MODULE_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(files_mod: ModuleType, capsys: pytest.CaptureFixture[str]):
    """run(files, check=False, diff=False, **options) -> (result dict, raw stdout)."""

    def _run(files: list[dict], check: bool = False, diff: bool = False, **options) -> tuple[dict, str]:
        args = {"files": files, "_ansible_check_mode": check, "_ansible_diff": diff, **options}
        with patch_module_args(args), pytest.raises(SystemExit):
            files_mod.main()
        out = capsys.readouterr().out
        return json.loads(out.strip().splitlines()[-1]), out

    return _run


def item(path: Path, content: str | None = None, mode: str = "0640", **kw) -> dict:
    """A `files` entry owned by the current user (root defaults would fail as non-root)."""
    entry = {"path": str(path), "mode": mode, "owner": ME, "group": MY_GROUP, **kw}
    if content is not None:
        entry["content"] = content
    return entry


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every path under root with its content, mode and inode."""
    snap = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else None
        snap[str(path)] = (data, stat.S_IMODE(st.st_mode), st.st_ino)
    return snap


def test_creates_files_and_dirs_then_unchanged(run, tmp_path: Path) -> None:
    files = [
        item(tmp_path / "a/b/conf.d", state="directory", mode="0750"),
        item(tmp_path / "a/b/conf.d/one.conf", "one\n", mode="0640"),
        item(tmp_path / "top.txt", "", mode="0600"),
    ]
    result, _ = run(files)
    assert result["changed"] is True
    assert result["changed_paths"] == [f["path"] for f in files]
    assert (tmp_path / "a/b/conf.d/one.conf").read_text() == "one\n"
    assert mode_of(tmp_path / "a/b/conf.d/one.conf") == 0o640
    assert mode_of(tmp_path / "a/b/conf.d") == 0o750
    assert mode_of(tmp_path / "a") == 0o755  # implicit parent
    assert (tmp_path / "top.txt").read_bytes() == b""
    assert not list(tmp_path.rglob(".botvps-tmp-*"))

    before = snapshot(tmp_path)
    again, _ = run(files)
    assert again["changed"] is False
    assert again["changed_paths"] == []
    assert snapshot(tmp_path) == before


def test_content_change_rewrites_file(run, tmp_path: Path) -> None:
    target = tmp_path / "f.conf"
    run([item(target, "old\n")])
    result, _ = run([item(target, "new\n")])
    assert result["changed_paths"] == [str(target)]
    assert target.read_text() == "new\n"


def test_mode_only_change_keeps_content_and_inode(run, tmp_path: Path) -> None:
    target = tmp_path / "f.conf"
    run([item(target, "same\n", mode="0644")])
    inode = target.stat().st_ino
    result, _ = run([item(target, "same\n", mode="0600")], diff=True)
    assert result["changed_paths"] == [str(target)]
    assert mode_of(target) == 0o600
    assert target.stat().st_ino == inode  # fixed in place, not rewritten
    assert [d["after"]["mode"] for d in result["diff"]] == ["0600"]


def test_validate_failure_replaces_nothing(run, tmp_path: Path) -> None:
    first, second = tmp_path / "first.conf", tmp_path / "second.conf"
    first.write_text("first old\n")
    second.write_text("second old\n")
    (tmp_path / "old.conf").write_text("must survive\n")
    os.chmod(first, 0o644)
    os.chmod(second, 0o644)
    before = snapshot(tmp_path)
    bad = "sh -c 'echo syntax error near line 1 >&2; exit 1' %s"
    result, _ = run([
        item(first, "first new\n", validate="grep -q new %s"),
        item(second, "second new\n", validate=bad),
        item(tmp_path / "newdir/third.conf", "third\n"),  # its directory must not appear
        item(tmp_path / "old.conf", state="absent"),
    ])
    assert result["failed"] is True
    assert str(second) in result["msg"]
    assert "syntax error near line 1" in result["msg"]
    assert snapshot(tmp_path) == before  # nothing replaced, created or left behind


def test_validate_output_of_secret_file_is_hidden(run, tmp_path: Path) -> None:
    bad = "sh -c 'cat \"$0\"; exit 1' %s"  # a validator that echoes the file
    result, out = run([item(tmp_path / "key", SECRET, secret=True, validate=bad)])
    assert result["failed"] is True
    assert "output hidden" in result["msg"]
    assert SECRET not in out
    assert not (tmp_path / "key").exists()


def test_not_enough_space_fails_before_any_write(run, tmp_path: Path) -> None:
    (tmp_path / "existing.conf").write_text("old\n")
    before = snapshot(tmp_path)
    target = tmp_path / "sub/new.conf"
    result, _ = run(
        [item(tmp_path / "existing.conf", "new\n"), item(target, "x" * 10)],
        min_free_kb=2**50,
    )
    assert result["failed"] is True
    assert "not enough free space" in result["msg"]
    assert str(target) in result["msg"]
    assert "bytes available" in result["msg"]
    assert snapshot(tmp_path) == before


def test_check_mode_writes_nothing(run, tmp_path: Path) -> None:
    (tmp_path / "existing.conf").write_text("old\n")
    stale = tmp_path / ".botvps-tmp-left"
    stale.write_text("partial")
    before = snapshot(tmp_path)
    files = [
        item(tmp_path / "existing.conf", "new\n"),
        item(tmp_path / "d", state="directory", mode="0700"),
        item(tmp_path / "d/f", "f\n"),
    ]
    result, _ = run(files, check=True)
    assert result["changed"] is True
    assert result["changed_paths"] == [f["path"] for f in files]
    assert snapshot(tmp_path) == before


def test_diff_shows_public_content_never_secret(run, tmp_path: Path) -> None:
    public, secret = tmp_path / "public.conf", tmp_path / "api.key"
    public.write_text("line1\nold\n")
    result, out = run([item(public, "line1\nnew\n"), item(secret, SECRET, mode="0600", secret=True)], diff=True)
    text_diffs = [d for d in result["diff"] if d.get("before_header") == str(public)]
    assert text_diffs == [{"before_header": str(public), "after_header": str(public),
                           "before": "line1\nold\n", "after": "line1\nnew\n"}]
    assert {"prepared": f"{secret}: secret content changed (not shown)\n"} in result["diff"]
    assert SECRET not in out  # not in diff, result or invocation
    assert "line1\nnew" not in json.dumps(result["invocation"])  # content is no_log
    assert secret.read_text() == SECRET


def test_stale_temp_files_are_removed(run, tmp_path: Path) -> None:
    stale = tmp_path / ".botvps-tmp-x1y2"
    stale.write_text("half written")
    keep = tmp_path / "unrelated.tmp"
    keep.write_text("keep")
    result, _ = run([item(tmp_path / "f", "f\n")])
    assert result["stale_temp_removed"] == [str(stale)]
    assert not stale.exists()
    assert keep.exists()


def test_absent_removes_files_and_dirs(run, tmp_path: Path) -> None:
    (tmp_path / "gone.conf").write_text("x")
    (tmp_path / "tree/sub").mkdir(parents=True)
    (tmp_path / "tree/sub/f").write_text("x")
    files = [item(tmp_path / "gone.conf", state="absent"), item(tmp_path / "tree", state="absent"),
             item(tmp_path / "never-existed", state="absent")]
    result, _ = run(files)
    assert result["changed_paths"] == [str(tmp_path / "gone.conf"), str(tmp_path / "tree")]
    assert list(tmp_path.iterdir()) == []
    again, _ = run(files)
    assert again["changed"] is False


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "/x/f", "content": "c"}, "mode is required with state=file"),
        ({"path": "/x/d", "state": "directory"}, "mode is required with state=directory"),
        ({"path": "/x/f", "content": "c", "mode": 416}, "quoted octal string"),
        ({"path": "/x/f", "content": "c", "mode": "rw-r"}, "not an octal string"),
        ({"path": "/x/f", "mode": "0640"}, "content is required"),
        ({"path": "x/f", "content": "c", "mode": "0640"}, "must be absolute"),
        ({"path": "/x/f", "content": "c", "mode": "0640", "validate": "true"}, "must contain %s"),
        ({"path": "/x/f", "content": "c", "mode": "0640", "owner": "no-such-user-xyz"}, "unknown owner"),
    ],
)
def test_bad_options_are_refused(run, entry: dict, message: str) -> None:
    result, _ = run([entry])
    assert result["failed"] is True
    assert message in result["msg"]


def test_owner_and_group_default_to_root(run, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown to root")
    target = tmp_path / "rootfile"
    run([{"path": str(target), "content": "r\n", "mode": "0600"}])
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (0, 0)


PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: write files
      botvps.infra.files:
        files:
          - {path: "{{ root }}/etc/app", state: directory, mode: "0750", owner: "{{ me }}", group: "{{ grp }}"}
          - path: "{{ root }}/etc/app/app.conf"
            content: "listen = 127.0.0.1\\n"
            mode: "0640"
            owner: "{{ me }}"
            group: "{{ grp }}"
          - path: "{{ root }}/etc/app/api.key"
            content: "%s"
            mode: "0600"
            owner: "{{ me }}"
            group: "{{ grp }}"
            secret: true
""" % SECRET


def ansible_playbook(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "ansible-playbook"
    command = str(exe) if exe.exists() else shutil.which("ansible-playbook")
    if not command:
        pytest.skip("ansible-playbook not installed")
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-tmp"),
    )
    extra = json.dumps({"root": str(tmp_path / "root"), "me": ME, "grp": MY_GROUP,
                        "ansible_python_interpreter": sys.executable})
    proc = subprocess.run(
        [command, "-i", "localhost,", "-c", "local", "-e", extra, "play.yml", *flags],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_real_playbook(tmp_path: Path) -> None:
    conf = tmp_path / "root/etc/app/app.conf"

    dry = ansible_playbook(tmp_path, "--check", "--diff", "-vvv")
    assert "+listen = 127.0.0.1" in dry.stdout
    assert "secret content changed (not shown)" in dry.stdout
    assert SECRET not in dry.stdout + dry.stderr
    assert "changed=1" in dry.stdout
    assert not (tmp_path / "root").exists()

    real = ansible_playbook(tmp_path, "--diff")
    assert "changed=1" in real.stdout
    assert SECRET not in real.stdout + real.stderr
    assert conf.read_text() == "listen = 127.0.0.1\n"
    assert mode_of(conf) == 0o640
    assert (tmp_path / "root/etc/app/api.key").read_text() == SECRET

    again = ansible_playbook(tmp_path)
    assert "changed=0" in again.stdout
