"""statehost: back up and restore the bots' state directories, on the server itself (stdlib only).

Runs as root on the host, one call per host for all its bots (``playbooks/backup.yml``,
``playbooks/restore.yml``)::

    python3 -c SOURCE backup  ARGS_JSON   -> {"bundle": PATH, "bots": {...}}
    python3 -c SOURCE restore ARGS_JSON   -> {"restored": [...], "kept": [...], "units": {...}}

and imported on the controller (``botvps.backup``, ``botvps.rebuild``) for the same manifest
and checksum checks, so that a backup is verified by one piece of code on both sides.

A backup bundle is an uncompressed tar of ``manifest.json`` and one ``NAME.tar.gz`` per bot. Each
bot archive holds its state directory (``/var/lib/botvps/NAME``) with numeric owners, modes and
mtimes; the manifest lists every entry (path, type, mode, owner, size, sha256) and each archive's
sha256. A bot is either stopped gracefully for the copy (``systemctl stop``: its KillSignal and
TimeoutStopSec let it cancel its orders) and started again if it was running, or, when it declares
``state_sqlite``, copied while it runs: those databases through SQLite's online backup API (a
consistent snapshot; SQLite run as root gives any -wal or -shm file it creates the database's
owner), the other files as they are. Files are read through directory file descriptors with
O_NOFOLLOW: a bot cannot make root copy a file from outside its directory by swapping in a link.

A restore checks every checksum before it writes anything, stops the bots it restores, extracts
each into a staging directory (owned by the bot's user), swaps it in with two renames, records
``/var/lib/botvps/.restore/NAME.json`` (which backup it restored) and starts the bots. Run again,
it leaves a bot already restored from the same backup alone (its state has moved on since), so an
interrupted rebuild can simply be repeated.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

FORMAT = 1
STATE_ROOT = "/var/lib/botvps"
WORK_DIR = STATE_ROOT + "/.restore"  # staging directories and restore markers; root only, bots never see it
TMP_DIR = "/var/tmp"  # backup bundles on their way out, uploads on their way in (removed when done)
MANIFEST = "manifest.json"
CHUNK = 1 << 20
SPOOL_MAX = 16 << 20  # file copies larger than this spool to disk, not memory
STOP_STATES = ("active", "activating", "reloading", "deactivating")


class StateError(Exception):
    """A backup or restore problem, worded for the operator (names the file, says what to do)."""


# ---------------------------------------------------------------- manifest and checksums (both sides)


def archive_name(bot: str) -> str:
    return f"{bot}.tar.gz"


def relpath_problem(path: str) -> str | None:
    """Why ``path`` cannot be an entry of a state directory (None when it can)."""
    if path == ".":
        return None
    if not path or "\x00" in path or path.startswith("/") or path.endswith("/"):
        return "is not a relative path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "has an empty, '.' or '..' component"
    return None


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def check_entries(entries: Any, label: str) -> list[dict]:
    """The entries of one bot as listed in the manifest, checked: safe paths, each under a listed directory."""
    if not isinstance(entries, list):
        raise StateError(f"{label}: 'entries' is not a list")
    if entries and not (isinstance(entries[0], dict) and entries[0].get("path") == "."):
        raise StateError(f"{label}: the first entry must be the state directory itself ('.')")
    kinds: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise StateError(f"{label}: an entry without a path: {entry!r:.80}")
        path = entry["path"]
        why = relpath_problem(path)
        if why:
            raise StateError(f"{label}: entry {path!r} {why}")
        if path in kinds:
            raise StateError(f"{label}: entry {path!r} is listed twice")
        kind = entry.get("type")
        if kind not in ("dir", "file", "symlink"):
            raise StateError(f"{label}: entry {path!r} has type {kind!r} (dir, file or symlink expected)")
        if kind == "file" and not (isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64
                                   and isinstance(entry.get("size"), int)):
            raise StateError(f"{label}: file {path!r} has no sha256 or size")
        if kind == "symlink" and not isinstance(entry.get("target"), str):
            raise StateError(f"{label}: symbolic link {path!r} has no target")
        if path == "." and kind != "dir":
            raise StateError(f"{label}: the state directory itself must be a directory")
        if path != "." and kinds.get(parent(path)) != "dir":
            raise StateError(f"{label}: {path!r} is not inside a directory listed before it")
        kinds[path] = kind
    return entries


def check_manifest(manifest: Any, label: str = MANIFEST) -> dict:
    """The manifest's structure, checked (raises StateError naming the field)."""
    if not isinstance(manifest, dict):
        raise StateError(f"{label}: not a JSON object")
    if manifest.get("format") != FORMAT:
        raise StateError(f"{label}: format {manifest.get('format')!r} is not {FORMAT}: "
                         "restore it with the botvps version that made it")
    bots = manifest.get("bots")
    if not isinstance(bots, dict) or not bots:
        raise StateError(f"{label}: lists no bots")
    for name, bot in bots.items():
        where = f"{label}: bots.{name}"
        if not isinstance(bot, dict):
            raise StateError(f"{where}: not an object")
        if bot.get("archive") != archive_name(name):
            raise StateError(f"{where}.archive: expected {archive_name(name)}")
        if not isinstance(bot.get("archive_sha256"), str) or len(bot["archive_sha256"]) != 64:
            raise StateError(f"{where}.archive_sha256: missing")
        check_entries(bot.get("entries"), where)
    return manifest


def sha256_stream(stream: IO[bytes], sink: IO[bytes] | None = None) -> tuple[str, int]:
    """(hex sha256, size) of what ``stream`` yields, copying it to ``sink`` on the way."""
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)


def member_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.isreg():
        return "file"
    return "other"


def verify_archive(archive: IO[bytes], bot: dict, label: str) -> int:
    """Check one bot archive against its manifest entry: the archive's sha256, then every member.

    ``label`` names the archive in messages. Returns the number of files checked.
    """
    archive.seek(0)
    digest, _ = sha256_stream(archive)
    if digest != bot["archive_sha256"]:
        raise StateError(f"{label}: sha256 {digest[:16]}... does not match the manifest's "
                         f"{bot['archive_sha256'][:16]}...: the archive is damaged or was changed")
    archive.seek(0)
    expected = {entry["path"]: entry for entry in bot["entries"]}
    seen: set[str] = set()
    files = 0
    try:
        with tarfile.open(fileobj=archive, mode="r:gz") as tar:
            for member in tar:
                entry = expected.get(member.name)
                where = f"{label}: {member.name}"
                if entry is None:
                    raise StateError(f"{where}: in the archive but not in the manifest")
                if member.name in seen:
                    raise StateError(f"{where}: twice in the archive")
                seen.add(member.name)
                if member_kind(member) != entry["type"]:
                    raise StateError(f"{where}: a {member_kind(member)} in the archive, "
                                     f"a {entry['type']} in the manifest")
                if entry["type"] == "symlink" and member.linkname != entry["target"]:
                    raise StateError(f"{where}: link target differs from the manifest")
                if entry["type"] == "file":
                    stream = tar.extractfile(member)
                    assert stream is not None
                    got, size = sha256_stream(stream)
                    if got != entry["sha256"] or size != entry["size"]:
                        raise StateError(f"{where}: sha256 {got[:16]}... ({size} bytes) does not match the "
                                         f"manifest's {entry['sha256'][:16]}... ({entry['size']} bytes)")
                    files += 1
    except (tarfile.TarError, OSError, EOFError) as err:
        raise StateError(f"{label}: cannot be read ({err}): the archive is damaged") from None
    missing = [path for path in expected if path not in seen]
    if missing:
        raise StateError(f"{label}: {missing[0]} is in the manifest but not in the archive"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return files


# ---------------------------------------------------------------- small host helpers


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def unit_state(unit: str) -> str:
    return run(["systemctl", "is-active", unit]).stdout.strip() or "unknown"


def systemctl(verb: str, units: list[str]) -> None:
    if not units:
        return
    result = run(["systemctl", verb, *units])
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip()[-300:]
        raise StateError(f"systemctl {verb} {' '.join(units)} failed: {why}")


def bot_ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StateError(f"user {user} does not exist on this host: provision the bot first") from None
    return entry.pw_uid, entry.pw_gid


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- backup


def walk(dirfd: int, prefix: str = "") -> Iterator[tuple[str, os.stat_result, int, str]]:
    """(relative path, lstat, parent dir fd, name) below ``dirfd``, sorted, never following a link."""
    for name in sorted(os.listdir(dirfd)):
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone while we looked (a running bot)
        rel = f"{prefix}/{name}" if prefix else name
        yield rel, st, dirfd, name
        if stat.S_ISDIR(st.st_mode):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
            except (FileNotFoundError, NotADirectoryError, OSError):
                continue
            try:
                if os.fstat(fd).st_ino == st.st_ino:
                    yield from walk(fd, rel)
            finally:
                os.close(fd)


def _tarinfo(rel: str, st: os.stat_result) -> tuple[tarfile.TarInfo, dict]:
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""  # numeric owners only
    info.mtime = int(st.st_mtime)
    entry = {"path": rel, "mode": f"{info.mode:04o}", "uid": st.st_uid, "gid": st.st_gid, "mtime": info.mtime}
    return info, entry


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, entry: dict, source: IO[bytes]) -> None:
    """Copy ``source`` to a spool while hashing it, then into the archive: size and hash always agree."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX, dir=TMP_DIR) as spool:
        digest, size = sha256_stream(source, spool)
        spool.seek(0)
        info.type, info.size = tarfile.REGTYPE, size
        tar.addfile(info, spool)
    entry.update(type="file", size=size, sha256=digest)


def archive_state(root_fd: int, archive_path: str, snapshots: dict[str, str] | None = None,
                  exclude: set[str] | frozenset[str] = frozenset()) -> tuple[list[dict], list[str]]:
    """Write the directory open at ``root_fd`` to a .tar.gz; (manifest entries, skipped paths).

    ``snapshots`` maps a relative path to a file to archive in its place (an SQLite online backup),
    with the original's mode, owner and mtime. Paths in ``exclude`` are left out.
    """
    snapshots = snapshots or {}
    entries: list[dict] = []
    skipped: list[str] = []
    with tarfile.open(archive_path, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
        info, entry = _tarinfo(".", os.fstat(root_fd))
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        entries.append({**entry, "type": "dir"})
        for rel, st, dirfd, name in walk(root_fd):
            if rel in exclude:
                continue
            info, entry = _tarinfo(rel, st)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                entries.append({**entry, "type": "dir"})
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dirfd)
                tar.addfile(info)
                entries.append({**entry, "type": "symlink", "target": info.linkname})
            elif stat.S_ISREG(st.st_mode):
                try:
                    if rel in snapshots:
                        source = open(snapshots[rel], "rb")  # noqa: SIM115 - closed below
                    else:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
                        if not stat.S_ISREG(os.fstat(fd).st_mode):
                            os.close(fd)
                            raise FileNotFoundError(rel)
                        source = os.fdopen(fd, "rb")
                except (FileNotFoundError, OSError) as err:
                    skipped.append(f"{rel} (could not be read: {err.strerror or 'vanished'})")
                    continue
                with source:
                    _add_file(tar, info, entry, source)
                entries.append(entry)
            else:
                skipped.append(f"{rel} (not a file, directory or link)")
    return entries, skipped


def sqlite_snapshot(root_fd: int, state_dir: str, rel: str, dest: str) -> None:
    """SQLite's online backup API from ``rel`` in the state directory to ``dest``: a consistent copy, bot running.

    One step under one read transaction. Run as root, SQLite gives any -wal, -shm or -journal file it
    creates the database's owner, so the bot can still open its database afterwards. The path must be
    a regular file reached without a symbolic link (a bot cannot point root at another bot's database).
    """
    import sqlite3
    import urllib.parse

    parts = rel.split("/")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        if not stat.S_ISREG(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode):
            raise StateError(f"SQLite online backup of {rel}: not a regular file")
    except OSError as err:
        raise StateError(f"SQLite online backup of {rel}: {err.strerror} (a symbolic link, or not there)") from None
    finally:
        os.close(fd)
    source = target = None
    try:
        uri = f"file:{urllib.parse.quote(os.path.join(state_dir, rel))}?mode=rw"  # never creates a database
        source = sqlite3.connect(uri, uri=True, timeout=60)
        target = sqlite3.connect(dest)
        source.backup(target)
        check = target.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StateError(f"SQLite online backup of {rel}: the copy fails quick_check: {check}")
    except sqlite3.Error as err:
        raise StateError(f"SQLite online backup of {rel} failed: {err}") from None
    finally:
        for connection in (source, target):
            if connection is not None:
                connection.close()


def backup_bot(bot: dict, work: str) -> dict:
    """Archive one bot's state into ``work``; its manifest entry."""
    name, unit, state_dir = bot["name"], bot["unit"], bot["state_dir"]
    uid, gid = bot_ids(bot["user"])
    sqlite = list(bot.get("sqlite") or [])
    result: dict[str, Any] = {"archive": archive_name(name), "user": bot["user"], "uid": uid, "gid": gid,
                              "state_dir": state_dir, "sqlite": sqlite, "warnings": []}
    archive = os.path.join(work, archive_name(name))
    try:
        root_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        root_fd = -1
    try:
        if root_fd < 0:  # the bot never ran: no state (a restore removes any)
            result.update(method="none", was_running=unit_state(unit) in STOP_STATES, stopped_seconds=0.0)
            result["entries"], result["skipped"] = [], []
            with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT):
                pass
        elif sqlite:
            result.update(method="sqlite-online", was_running=unit_state(unit) in STOP_STATES, stopped_seconds=0.0)
            snapdir = tempfile.mkdtemp(prefix=f"sqlite-{name}-", dir=work)
            snapshots = {}
            for index, rel in enumerate(sqlite):
                try:
                    os.stat(rel, dir_fd=root_fd, follow_symlinks=False)
                except FileNotFoundError:
                    result["warnings"].append(f"{rel}: declared in state_sqlite but not found (nothing to copy)")
                    continue
                snapshots[rel] = os.path.join(snapdir, f"{index}.db")
                sqlite_snapshot(root_fd, state_dir, rel, snapshots[rel])
            exclude = {f"{rel}{suffix}" for rel in sqlite for suffix in ("-wal", "-shm", "-journal")}
            result["entries"], result["skipped"] = archive_state(root_fd, archive, snapshots, exclude)
            shutil.rmtree(snapdir, ignore_errors=True)
        else:
            running = unit_state(unit) in STOP_STATES
            result.update(method="stopped", was_running=running)
            started = time.monotonic()
            if running:
                systemctl("stop", [unit])  # KillSignal, then up to TimeoutStopSec to cancel orders
            try:
                result["entries"], result["skipped"] = archive_state(root_fd, archive)
            finally:
                if running:
                    systemctl("start", [unit])
                result["stopped_seconds"] = round(time.monotonic() - started, 1) if running else 0.0
    finally:
        if root_fd >= 0:
            os.close(root_fd)
    with open(archive, "rb") as handle:
        result["archive_sha256"], result["archive_size"] = sha256_stream(handle)
    return result


def remove_stale(pattern: str, older_than: float = 3600.0, now_: float | None = None) -> list[str]:
    """Remove what interrupted runs left (``pattern``, e.g. /var/tmp/botvps-backup-*) older than an hour."""
    import glob

    removed = []
    limit = (now_ or time.time()) - older_than
    for path in glob.glob(pattern):
        try:
            if os.lstat(path).st_mtime >= limit:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(path)
        except OSError:
            continue
    return removed


def backup(args: dict) -> dict:
    """Back up every bot in ``args["bots"]``; one bundle for the controller to fetch."""
    remove_stale(f"{TMP_DIR}/botvps-backup-*")
    work = tempfile.mkdtemp(prefix="botvps-backup-", dir=TMP_DIR)
    try:
        manifest: dict[str, Any] = {"format": FORMAT, "host": args["host"], "static_ipv4": args.get("static_ipv4", ""),
                                    "created": now(), "bots": {}}
        errors = []
        for bot in args["bots"]:
            try:
                manifest["bots"][bot["name"]] = backup_bot(bot, work)
            except (StateError, OSError, subprocess.SubprocessError) as err:
                errors.append(f"bot {bot['name']}: {err}")
        if errors:
            raise StateError("; ".join(errors))
        bundle = os.path.join(work, "bundle.tar")
        with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
            for name in manifest["bots"]:
                tar.add(os.path.join(work, archive_name(name)), arcname=archive_name(name), recursive=False)
                os.unlink(os.path.join(work, archive_name(name)))
        owner = pwd.getpwnam(args["owner"]) if args.get("owner") else None
        if owner:  # the login account fetches it without privilege escalation (no base64 copy in memory)
            for path in (work, bundle):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chmod(bundle, 0o600)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    keys = ("method", "was_running", "stopped_seconds", "archive_size", "warnings", "skipped")
    summary = {name: {key: bot[key] for key in keys} | {"files": sum(e["type"] == "file" for e in bot["entries"])}
               for name, bot in manifest["bots"].items()}
    return {"bundle": bundle, "work": work, "bots": summary}


# ---------------------------------------------------------------- restore


def _write_file(target: str, stream: IO[bytes], entry: dict, label: str) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        digest, size = sha256_stream(stream, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if digest != entry["sha256"] or size != entry["size"]:
        raise StateError(f"{label}: {entry['path']}: written file does not match the manifest")


def extract(archive: IO[bytes], bot: dict, dest: str, uid: int, gid: int, label: str) -> int:
    """Extract a verified bot archive into the new directory ``dest``, owned by uid:gid; the file count.

    Every path was checked (relative, inside a directory listed before it), so nothing is written
    outside ``dest``. Modes are kept except setuid/setgid; mtimes are set last.
    """
    entries = {entry["path"]: entry for entry in bot["entries"]}
    files = 0
    archive.seek(0)
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        for member in tar:
            entry = entries[member.name]
            target = dest if member.name == "." else os.path.join(dest, member.name)
            if entry["type"] == "dir":
                if member.name != ".":
                    os.mkdir(target, 0o700)
            elif entry["type"] == "symlink":
                os.symlink(entry["target"], target)
            else:
                stream = tar.extractfile(member)
                assert stream is not None
                _write_file(target, stream, entry, label)
                files += 1
            os.chown(target, uid, gid, follow_symlinks=False)
            if entry["type"] != "symlink":
                os.chmod(target, int(entry["mode"], 8) & 0o1777)
    for entry in reversed(bot["entries"]):
        target = dest if entry["path"] == "." else os.path.join(dest, entry["path"])
        os.utime(target, (entry["mtime"], entry["mtime"]), follow_symlinks=False)
    return files


def marker_path(name: str) -> str:
    return os.path.join(WORK_DIR, f"{name}.json")


def restored_from(name: str) -> str | None:
    try:
        with open(marker_path(name)) as handle:
            return json.load(handle).get("backup")
    except (OSError, ValueError, AttributeError):
        return None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_bot(archive: IO[bytes], entry: dict, bot: dict, backup_id: str, label: str) -> int:
    """Replace one bot's state directory with the archive's (the bot is stopped); the file count."""
    name, state_dir = bot["name"], bot["state_dir"]
    uid, gid = bot_ids(bot["user"])
    staging, old = os.path.join(WORK_DIR, f"{name}.new"), os.path.join(WORK_DIR, f"{name}.old")
    for leftover in (staging, old):  # from an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    files = 0
    if entry["entries"]:
        os.mkdir(staging, 0o700)
        files = extract(archive, entry, staging, uid, gid, label)
    if os.path.lexists(state_dir):
        os.rename(state_dir, old)
    if entry["entries"]:
        os.rename(staging, state_dir)
    _fsync_dir(os.path.dirname(state_dir))
    shutil.rmtree(old, ignore_errors=True)
    tmp = marker_path(name) + ".tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        json.dump({"backup": backup_id, "restored": now(), "files": files}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, marker_path(name))
    return files


def _open_bundle(path: str) -> tarfile.TarFile:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"{path}: not a regular file")
    return tarfile.open(path, "r:")


def _member(tar: tarfile.TarFile, name: str, label: str) -> IO[bytes]:
    try:
        stream = tar.extractfile(tar.getmember(name))
    except KeyError:
        stream = None
    if stream is None:
        raise StateError(f"{label}: {name} is missing from the bundle")
    return stream


def wait_active(units: list[str], timeout: float = 20.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Each unit's state once all are active, or when ``timeout`` is up."""
    deadline = time.monotonic() + timeout
    while True:
        states = {unit: unit_state(unit) for unit in units}
        if all(state == "active" for state in states.values()) or time.monotonic() > deadline:
            return states
        sleep(1)


def restore(args: dict) -> dict:
    """Verify the bundle, then restore each planned bot's state and start the bots."""
    bundle, backup_id = args["bundle"], args["backup_id"]
    remove_stale(f"{TMP_DIR}/botvps-restore-*.tar")  # uploads an interrupted run left (not this one: it is new)
    try:
        with _open_bundle(bundle) as tar:
            raw = _member(tar, MANIFEST, bundle).read()
            if hashlib.sha256(raw).hexdigest() != args["manifest_sha256"]:
                raise StateError(f"{bundle}: {MANIFEST} changed in transfer (sha256 differs from the controller's)")
            try:
                manifest = check_manifest(json.loads(raw))
            except ValueError as err:
                raise StateError(f"{MANIFEST}: not JSON ({err})") from None
            archives: dict[str, IO[bytes]] = {}
            verified: dict[str, int] = {}
            for bot in args["bots"]:  # every checksum before anything is written
                entry = manifest["bots"].get(bot["name"])
                if entry is None:
                    raise StateError(f"{MANIFEST}: has no bot {bot['name']}")
                bot_ids(bot["user"])
                spool = tempfile.TemporaryFile(dir=TMP_DIR)  # noqa: SIM115 - closed below
                sha256_stream(_member(tar, entry["archive"], bundle), spool)
                verified[bot["name"]] = verify_archive(spool, entry, entry["archive"])
                archives[bot["name"]] = spool
        os.makedirs(STATE_ROOT, mode=0o700, exist_ok=True)  # as systemd makes it for StateDirectory=botvps/NAME
        os.makedirs(WORK_DIR, mode=0o700, exist_ok=True)
        todo = [bot for bot in args["bots"] if args.get("force") or restored_from(bot["name"]) != backup_id]
        kept = [bot["name"] for bot in args["bots"] if bot not in todo]
        systemctl("stop", [bot["unit"] for bot in todo])
        restored = {}
        for bot in todo:
            entry = manifest["bots"][bot["name"]]
            restored[bot["name"]] = restore_bot(archives[bot["name"]], entry, bot, backup_id, entry["archive"])
        for spool in archives.values():
            spool.close()
    finally:
        if os.path.lexists(bundle):
            os.unlink(bundle)
    units = list(args.get("start") or [])
    states: dict[str, str] = {}
    if units:
        result = run(["systemctl", "start", *units])
        states = wait_active(units)
        if result.returncode != 0:
            states["_error"] = (result.stderr or result.stdout).strip()[-300:]
    return {"verified": verified, "restored": restored, "kept": kept, "units": states}


# ---------------------------------------------------------------- entry point


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("backup", "restore"):
        print(json.dumps({"error": "usage: statehost backup|restore ARGS_JSON"}))
        return 2
    try:
        result = (backup if argv[0] == "backup" else restore)(json.loads(argv[1]))
    except (StateError, OSError, subprocess.SubprocessError, ValueError, KeyError) as err:
        print(json.dumps({"error": str(err) or type(err).__name__}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
