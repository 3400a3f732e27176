"""Backups: archive and manifest (statehost), checksum verification on both sides, storing and loading (backup)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from botvps import backup
from botvps.hostcode import statehost

StateError = statehost.StateError


def make_state(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "state.json").write_text('{"heartbeats": 7}')
    (root / "data" / "orders.bin").write_bytes(os.urandom(3000))
    (root / "data" / "empty").write_bytes(b"")
    (root / "latest").symlink_to("data/orders.bin")
    os.mkfifo(root / "pipe")
    os.chmod(root / "state.json", 0o640)
    os.chmod(root, 0o700)
    return root


def archive(root: Path, dest: Path, **kwargs) -> dict:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries, skipped = statehost.archive_state(fd, str(dest), **kwargs)
    finally:
        os.close(fd)
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    return {"archive": dest.name, "archive_sha256": digest, "entries": entries, "skipped": skipped,
            "method": "stopped", "was_running": True, "stopped_seconds": 1.0, "archive_size": dest.stat().st_size,
            "sqlite": [], "warnings": [], "user": "bot-alpha", "uid": os.getuid(), "gid": os.getgid(),
            "state_dir": "/var/lib/botvps/alpha"}


@pytest.fixture
def alpha(tmp_path) -> tuple[Path, dict, Path]:
    root = make_state(tmp_path / "alpha-state")
    dest = tmp_path / "alpha.tar.gz"
    return root, archive(root, dest), dest


def test_archive_lists_every_entry_with_checksums_and_skips_what_tar_cannot_carry(alpha):
    root, bot, _ = alpha
    by_path = {e["path"]: e for e in bot["entries"]}
    assert list(by_path) == [".", "data", "data/empty", "data/orders.bin", "latest", "state.json"]
    assert by_path["."]["type"] == "dir" and by_path["."]["mode"] == "0700"
    assert by_path["state.json"]["mode"] == "0640"
    assert by_path["data/orders.bin"]["sha256"] == hashlib.sha256((root / "data/orders.bin").read_bytes()).hexdigest()
    assert by_path["latest"] == {**by_path["latest"], "type": "symlink", "target": "data/orders.bin"}
    assert bot["skipped"] == ["pipe (not a file, directory or link)"]
    statehost.check_entries(bot["entries"], "alpha")


def test_archive_keeps_numeric_owners_and_no_names(alpha):
    _, _, dest = alpha
    with tarfile.open(dest) as tar:
        for member in tar:
            assert member.uname == "" and member.gname == ""
            assert member.uid == os.getuid()


def test_verify_accepts_an_intact_archive(alpha):
    _, bot, dest = alpha
    with dest.open("rb") as handle:
        assert statehost.verify_archive(handle, bot, "alpha.tar.gz") == 3


def test_a_flipped_byte_is_named_with_the_archive(alpha):
    _, bot, dest = alpha
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(StateError, match=r"^alpha\.tar\.gz: sha256 .* does not match the manifest"):
        statehost.verify_archive(io.BytesIO(bytes(data)), bot, "alpha.tar.gz")


def test_a_file_whose_checksum_differs_is_named(alpha):
    _, bot, dest = alpha
    for entry in bot["entries"]:
        if entry["path"] == "data/orders.bin":
            entry["sha256"] = "0" * 64
    with pytest.raises(StateError, match=r"alpha\.tar\.gz: data/orders\.bin: sha256 .* does not match"):
        statehost.verify_archive(dest.open("rb"), bot, "alpha.tar.gz")


def test_an_entry_missing_from_the_archive_is_named(alpha):
    _, bot, dest = alpha
    bot["entries"].append({"path": "data/ghost", "type": "file", "size": 1, "sha256": "1" * 64, "mode": "0600",
                           "uid": 0, "gid": 0, "mtime": 0})
    with pytest.raises(StateError, match="data/ghost is in the manifest but not in the archive"):
        statehost.verify_archive(dest.open("rb"), bot, "alpha.tar.gz")


@pytest.mark.parametrize("path,why", [
    ("../etc/passwd", "component"), ("/etc/passwd", "not a relative path"), ("a//b", "component"),
    ("latest/x", "not inside a directory"), ("nodir/x", "not inside a directory"),
])
def test_manifest_paths_cannot_leave_the_state_directory(alpha, path, why):
    _, bot, _ = alpha
    entries = bot["entries"] + [{"path": path, "type": "file", "size": 0, "sha256": "0" * 64}]
    with pytest.raises(StateError, match=why):
        statehost.check_entries(entries, "alpha")


def test_manifest_must_start_with_the_directory_itself():
    with pytest.raises(StateError, match="first entry"):
        statehost.check_entries([{"path": "x", "type": "dir"}], "alpha")


def test_extract_reproduces_the_directory_byte_for_byte(alpha, tmp_path):
    root, bot, dest = alpha
    os.chmod(root / "data" / "orders.bin", 0o4755)  # setuid is dropped on the way back
    bot = archive(root, dest)
    target = tmp_path / "restored"
    target.mkdir(mode=0o700)
    with dest.open("rb") as handle:
        files = statehost.extract(handle, bot, str(target), os.getuid(), os.getgid(), "alpha.tar.gz")
    assert files == 3
    for rel in ("state.json", "data/orders.bin", "data/empty"):
        assert (target / rel).read_bytes() == (root / rel).read_bytes()
        assert int((target / rel).stat().st_mtime) == int((root / rel).stat().st_mtime)
    assert stat.S_IMODE((target / "state.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((target / "data" / "orders.bin").stat().st_mode) == 0o755
    assert os.readlink(target / "latest") == "data/orders.bin"
    assert not (target / "pipe").exists()


def test_sqlite_is_copied_online_and_its_journal_files_left_out(tmp_path):
    root = tmp_path / "beta"
    root.mkdir()
    db = sqlite3.connect(root / "trades.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, pair TEXT)")
    db.executemany("INSERT INTO trades (pair) VALUES (?)", [("BTCUSDT",)] * 50)
    db.commit()  # still open: trades.db-wal and -shm exist, as with a running bot
    assert (root / "trades.db-wal").exists()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    snap = tmp_path / "snap.db"
    try:
        statehost.sqlite_snapshot(fd, str(root), "trades.db", str(snap))
        entries, _ = statehost.archive_state(fd, str(tmp_path / "beta.tar.gz"), {"trades.db": str(snap)},
                                             {"trades.db-wal", "trades.db-shm", "trades.db-journal"})
    finally:
        os.close(fd)
        db.close()
    assert [e["path"] for e in entries] == [".", "trades.db"]
    assert sqlite3.connect(snap).execute("SELECT count(*) FROM trades").fetchone() == (50,)
    assert entries[1]["sha256"] == hashlib.sha256(snap.read_bytes()).hexdigest()


@pytest.mark.parametrize("make,error", [
    (lambda d: (d / "trades.db").symlink_to(d / "other.db"), "trades.db: not a regular file"),
    (lambda d: (d / "trades.db").write_bytes(b"not a database at all" * 100), "SQLite online backup of trades.db failed"),
    (lambda d: None, r"trades.db: No such file"),
])
def test_sqlite_snapshot_refuses_links_and_reports_broken_databases(tmp_path, make, error):
    (tmp_path / "other.db").write_bytes(b"")
    make(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(StateError, match=error):
            statehost.sqlite_snapshot(fd, str(tmp_path), "trades.db", str(tmp_path / "out.db"))
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the host's backup run (systemctl faked)


@pytest.fixture
def fake_systemd(monkeypatch):
    calls: list[tuple[str, ...]] = []
    states = {"botvps-bot-alpha.service": "active", "botvps-bot-beta.service": "inactive"}
    monkeypatch.setattr(statehost, "unit_state", lambda unit: states.get(unit, "inactive"))
    monkeypatch.setattr(statehost, "systemctl", lambda verb, units: calls.append((verb, *units)))
    monkeypatch.setattr(statehost, "bot_ids", lambda user: (os.getuid(), os.getgid()))
    return calls


def test_backup_stops_a_running_bot_for_the_copy_and_starts_it_again(tmp_path, fake_systemd):
    root = make_state(tmp_path / "alpha")
    (root / "pipe").unlink()
    bot = {"name": "alpha", "user": "bot-alpha", "unit": "botvps-bot-alpha.service", "state_dir": str(root), "sqlite": []}
    result = statehost.backup_bot(bot, str(tmp_path))
    assert fake_systemd == [("stop", "botvps-bot-alpha.service"), ("start", "botvps-bot-alpha.service")]
    assert result["method"] == "stopped" and result["was_running"] is True
    assert (tmp_path / "alpha.tar.gz").exists()


def test_backup_leaves_a_stopped_bot_stopped(tmp_path, fake_systemd):
    root = make_state(tmp_path / "beta")
    bot = {"name": "beta", "user": "bot-beta", "unit": "botvps-bot-beta.service", "state_dir": str(root), "sqlite": []}
    assert statehost.backup_bot(bot, str(tmp_path))["was_running"] is False
    assert fake_systemd == []


def test_backup_of_a_bot_that_never_ran_has_no_entries(tmp_path, fake_systemd):
    bot = {"name": "alpha", "user": "bot-alpha", "unit": "botvps-bot-alpha.service",
           "state_dir": str(tmp_path / "missing"), "sqlite": []}
    result = statehost.backup_bot(bot, str(tmp_path))
    assert result["method"] == "none" and result["entries"] == []


# ---------------------------------------------------------------- storing and loading on the controller


def host_bundle(tmp_path: Path, names=("alpha", "beta")) -> Path:
    """A bundle as the host's backup script writes it."""
    work = tmp_path / "host"
    work.mkdir(parents=True)
    manifest = {"format": 1, "host": "vps1", "static_ipv4": "203.0.113.10", "created": "2025-01-02T03:04:05Z", "bots": {}}
    for name in names:
        root = make_state(tmp_path / f"state-{name}")
        (root / "pipe").unlink()
        manifest["bots"][name] = archive(root, work / f"{name}.tar.gz")
    bundle = work / "bundle.tar"
    with tarfile.open(bundle, "w") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name in names:
            tar.add(work / f"{name}.tar.gz", arcname=f"{name}.tar.gz")
    return bundle


def test_store_verifies_and_names_the_backup_directory(tmp_path):
    stored = backup.store(host_bundle(tmp_path), tmp_path / "out" / "vps1", "20250102T030405Z")
    assert stored.directory == tmp_path / "out" / "vps1" / "20250102T030405Z"
    assert sorted(p.name for p in stored.directory.iterdir()) == [
        "alpha.tar.gz", "beta.tar.gz", "manifest.json", "manifest.json.sha256"]
    assert backup.verify(backup.load(tmp_path / "out" / "vps1")) == {"alpha": 3, "beta": 3}
    assert "secrets" not in json.dumps(stored.manifest)
    assert backup.load(tmp_path / "out" / "vps1").host == "vps1"


def test_store_of_a_damaged_bundle_leaves_no_backup(tmp_path):
    bundle = host_bundle(tmp_path)
    data = bytearray(bundle.read_bytes())
    offset = data.index(b"alpha.tar.gz", 2048) + 2048  # inside alpha's archive data
    data[offset] ^= 0xFF
    bundle.write_bytes(bytes(data))
    with pytest.raises(StateError):
        backup.store(bundle, tmp_path / "out" / "vps1", "20250102T030405Z")
    assert list((tmp_path / "out" / "vps1").iterdir()) == []


def test_load_finds_the_newest_backup_of_a_host(tmp_path):
    for stamp in ("20250101T000000Z", "20250301T000000Z", "20250201T000000Z"):
        backup.store(host_bundle(tmp_path / stamp), tmp_path / "out" / "vps1", stamp)
    assert backup.load(tmp_path / "out" / "vps1").directory.name == "20250301T000000Z"


def test_a_damaged_manifest_is_named(tmp_path):
    stored = backup.store(host_bundle(tmp_path), tmp_path / "out" / "vps1", "s1")
    manifest = stored.directory / "manifest.json"
    manifest.write_text(manifest.read_text().replace("vps1", "vps2"))
    with pytest.raises(StateError, match=r"manifest\.json: sha256 does not match manifest\.json\.sha256"):
        backup.load(stored.directory)


def test_a_corrupted_archive_is_named_before_anything_is_restored(tmp_path):
    stored = backup.store(host_bundle(tmp_path), tmp_path / "out" / "vps1", "s1")
    archive_file = stored.directory / "beta.tar.gz"
    data = bytearray(archive_file.read_bytes())
    data[-30] ^= 0x01
    archive_file.write_bytes(bytes(data))
    with pytest.raises(StateError, match=r"beta\.tar\.gz: sha256 .* does not match the manifest"):
        backup.verify(backup.load(stored.directory))


def test_a_missing_archive_is_named(tmp_path):
    stored = backup.store(host_bundle(tmp_path), tmp_path / "out" / "vps1", "s1")
    (stored.directory / "alpha.tar.gz").unlink()
    with pytest.raises(StateError, match=r"alpha\.tar\.gz: missing"):
        backup.verify(backup.load(stored.directory))


def test_no_backup_in_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StateError, match="no backup here"):
        backup.load(tmp_path)


def test_select_bots_and_hosts():
    hosts = {"vps1": {"bots": [{"name": "alpha"}, {"name": "beta"}]}, "vps2": {"bots": [{"name": "gamma"}]}, "web": {}}
    assert backup.select(hosts) == ({"vps1": ["alpha", "beta"], "vps2": ["gamma"]}, [])
    assert backup.select(hosts, bot="gamma") == ({"vps2": ["gamma"]}, [])
    assert backup.select(hosts, host="vps1", bot="alpha") == ({"vps1": ["alpha"]}, [])
    assert backup.select(hosts, host="vps9")[1] == ["vps9: not in the inventory (hosts: vps1, vps2, web)"]
    assert backup.select(hosts, host="vps1", bot="gamma")[1] == ["bot gamma: not declared on host vps1"]
    assert backup.select(hosts, host="web")[1] == ["host web: declares no bots: nothing to back up"]


# ---------------------------------------------------------------- the host's restore run (systemctl faked)


@pytest.fixture
def host_root(tmp_path, monkeypatch, fake_systemd):
    state_root = tmp_path / "var-lib-botvps"
    state_root.mkdir()
    monkeypatch.setattr(statehost, "WORK_DIR", str(state_root / ".restore"))
    monkeypatch.setattr(statehost, "run", lambda argv, timeout=600: type("R", (), {"returncode": 0, "stdout": "", "stderr": ""})())
    return state_root


def restore_args(stored: backup.Backup, state_root: Path, tmp_path: Path, names=("alpha", "beta")) -> dict:
    bundle = backup.pack(stored, list(names), tmp_path / f"upload-{os.urandom(4).hex()}.tar")
    return {"bundle": str(bundle), "manifest_sha256": stored.manifest_sha256, "backup_id": stored.manifest_sha256,
            "bots": [{"name": n, "user": f"bot-{n}", "unit": f"botvps-bot-{n}.service", "state_dir": str(state_root / n)}
                     for n in names], "start": []}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_restore_replaces_the_state_and_a_second_run_keeps_the_newer_state(tmp_path, host_root, fake_systemd):
    stored = backup.store(host_bundle(tmp_path), tmp_path / "out" / "vps1", "s1")
    (host_root / "alpha").mkdir()
    (host_root / "alpha" / "stale").write_text("from the empty first start")
    args = restore_args(stored, host_root, tmp_path)
    result = statehost.restore(args)
    assert result["restored"] == {"alpha": 3, "beta": 3} and result["kept"] == []
    assert ("stop", "botvps-bot-alpha.service", "botvps-bot-beta.service") in fake_systemd
    assert tree(host_root / "alpha") == tree(tmp_path / "state-alpha")
    assert not Path(args["bundle"]).exists()  # the upload is removed
    (host_root / "alpha" / "state.json").write_text('{"heartbeats": 99}')  # the bot ran on
    again = statehost.restore(restore_args(stored, host_root, tmp_path))
    assert again["restored"] == {} and again["kept"] == ["alpha", "beta"]
    assert (host_root / "alpha" / "state.json").read_text() == '{"heartbeats": 99}'


def test_restore_finishes_what_an_interrupted_run_left(tmp_path, host_root):
    stored = backup.store(host_bundle(tmp_path), tmp_path / "out" / "vps1", "s1")
    work = host_root / ".restore"
    (work / "alpha.new" / "half").mkdir(parents=True)  # cut off during extraction
    (work / "beta.old").mkdir()  # cut off between the two renames
    result = statehost.restore(restore_args(stored, host_root, tmp_path))
    assert result["restored"] == {"alpha": 3, "beta": 3}
    assert sorted(p.name for p in work.iterdir()) == ["alpha.json", "beta.json"]


def test_restore_of_a_corrupted_bundle_writes_nothing(tmp_path, host_root, fake_systemd):
    stored = backup.store(host_bundle(tmp_path), tmp_path / "out" / "vps1", "s1")
    (host_root / "alpha").mkdir()
    (host_root / "alpha" / "keep").write_text("untouched")
    args = restore_args(stored, host_root, tmp_path)
    with tarfile.open(args["bundle"]) as tar:
        offset = tar.getmember("beta.tar.gz").offset_data + 100
    data = bytearray(Path(args["bundle"]).read_bytes())
    data[offset] ^= 0xFF
    Path(args["bundle"]).write_bytes(bytes(data))
    with pytest.raises(StateError, match=r"^beta\.tar\.gz: sha256"):
        statehost.restore(args)
    assert (host_root / "alpha" / "keep").read_text() == "untouched"
    assert not (host_root / ".restore").exists() and fake_systemd == []


def test_restore_refuses_a_manifest_changed_in_transfer(tmp_path, host_root):
    stored = backup.store(host_bundle(tmp_path), tmp_path / "out" / "vps1", "s1")
    args = restore_args(stored, host_root, tmp_path) | {"manifest_sha256": "0" * 64}
    with pytest.raises(StateError, match="changed in transfer"):
        statehost.restore(args)


def test_the_host_script_prints_one_json_error_line(capsys):
    assert statehost.main(["restore", json.dumps({"bundle": "/nonexistent", "backup_id": "x", "manifest_sha256": "x",
                                                  "bots": []})]) == 1
    assert "error" in json.loads(capsys.readouterr().out)


def test_leftovers_of_interrupted_runs_are_removed_after_an_hour(tmp_path):
    old_dir, new_dir = tmp_path / "botvps-backup-old", tmp_path / "botvps-backup-new"
    old_file = tmp_path / "botvps-backup-x"
    old_dir.mkdir()
    (old_dir / "bundle.tar").write_bytes(b"x")
    new_dir.mkdir()
    old_file.write_bytes(b"x")
    for path in (old_dir, old_file):
        os.utime(path, (1000, 1000))
    removed = statehost.remove_stale(str(tmp_path / "botvps-backup-*"), now_=1000 + 7200)
    assert sorted(removed) == sorted([str(old_dir), str(old_file)]) and new_dir.exists()
