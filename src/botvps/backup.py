"""`invoke bots.backup`: each bot's state to the controller, with checksums; reading and checking backups.

A backup is a directory ``OUT/HOST/STAMP/`` (STAMP: UTC time, e.g. ``20250102T030405Z``) holding
``manifest.json`` (every entry of every bot's state directory with its sha256, see
the collection's ``statehost.py``), ``manifest.json.sha256`` and one ``BOT.tar.gz`` per bot. It is written
under a ``.incoming-`` name and renamed once every checksum has been verified, so a directory with
a STAMP name is always a complete backup. Secrets are not in it: a rebuild takes them from the vault.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botvps import provision, runner, validate
from botvps.paths import PROJECT_ROOT
from botvps.hostcode import statehost

MANIFEST, StateError, archive_name = statehost.MANIFEST, statehost.StateError, statehost.archive_name
check_manifest, verify_archive = statehost.check_manifest, statehost.verify_archive

PLAYBOOK = PROJECT_ROOT / "playbooks" / "backup.yml"
CHECKSUM = MANIFEST + ".sha256"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


@dataclass
class Backup:
    directory: Path
    manifest: dict
    manifest_sha256: str

    @property
    def host(self) -> str:
        return str(self.manifest.get("host", "?"))

    @property
    def static_ipv4(self) -> str:
        return str(self.manifest.get("static_ipv4") or "")

    @property
    def bots(self) -> dict[str, dict]:
        return self.manifest["bots"]

    def archive(self, bot: str) -> Path:
        return self.directory / archive_name(bot)


# ---------------------------------------------------------------- reading and checking


def find(path: Path) -> Path:
    """The backup directory ``path`` names: itself, or the newest backup below it (OUT/HOST or OUT/HOST/STAMP)."""
    if (path / MANIFEST).is_file():
        return path
    if not path.is_dir():
        raise StateError(f"{path}: no such backup directory")
    found = sorted(p.parent for p in path.glob(f"*/{MANIFEST}") if not p.parent.name.startswith("."))
    if not found:
        raise StateError(f"{path}: no backup here (a backup directory holds {MANIFEST}; "
                         "give OUT/HOST/STAMP, or OUT/HOST for its newest backup)")
    return found[-1]


def load(path: Path) -> Backup:
    """Read a backup's manifest and check it against its checksum file (raises StateError naming the file)."""
    directory = find(Path(path))
    manifest_file = directory / MANIFEST
    raw = manifest_file.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        recorded = (directory / CHECKSUM).read_text().split()[0]
    except (OSError, IndexError):
        raise StateError(f"{directory / CHECKSUM}: missing or empty: the backup is incomplete") from None
    if recorded != digest:
        raise StateError(f"{manifest_file}: sha256 does not match {CHECKSUM}: the manifest is damaged")
    try:
        manifest = json.loads(raw)
    except ValueError as err:
        raise StateError(f"{manifest_file}: not JSON ({err})") from None
    return Backup(directory, check_manifest(manifest, str(manifest_file)), digest)


def verify(backup: Backup, bots: list[str] | None = None) -> dict[str, int]:
    """Check every archive (or those of ``bots``) against the manifest; files checked per bot."""
    counts = {}
    for name in bots if bots is not None else list(backup.bots):
        path = backup.archive(name)
        try:
            with path.open("rb") as handle:
                counts[name] = verify_archive(handle, backup.bots[name], str(path))
        except FileNotFoundError:
            raise StateError(f"{path}: missing: the backup is incomplete") from None
    return counts


def store(bundle: Path, host_dir: Path, stamp: str) -> Backup:
    """Unpack a fetched bundle into ``host_dir/stamp``, verified; the bundle is removed."""
    incoming = host_dir / f".incoming-{stamp}"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True, mode=0o700)
    try:
        with tarfile.open(bundle, "r:") as tar:
            manifest_member = tar.extractfile(MANIFEST) if MANIFEST in tar.getnames() else None
            if manifest_member is None:
                raise StateError(f"{bundle}: the host's bundle has no {MANIFEST}")
            raw = manifest_member.read()
            manifest = check_manifest(json.loads(raw), f"{bundle}: {MANIFEST}")
            (incoming / MANIFEST).write_bytes(raw)
            (incoming / CHECKSUM).write_text(f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n")
            for name in manifest["bots"]:  # only the names the manifest expects are written
                member = tar.extractfile(archive_name(name)) if archive_name(name) in tar.getnames() else None
                if member is None:
                    raise StateError(f"{bundle}: the host's bundle has no {archive_name(name)}")
                with (incoming / archive_name(name)).open("wb") as out:
                    shutil.copyfileobj(member, out)
        backup = load(incoming)
        verify(backup)
        final = host_dir / stamp
        incoming.rename(final)
        bundle.unlink()
        return Backup(final, backup.manifest, backup.manifest_sha256)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise


def pack(backup: Backup, bots: list[str], dest: Path) -> Path:
    """A bundle of the manifest and ``bots``' archives, for upload to the host being restored."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(backup.directory / MANIFEST, arcname=MANIFEST, recursive=False)
        for name in bots:
            tar.add(backup.archive(name), arcname=archive_name(name), recursive=False)
    return dest


# ---------------------------------------------------------------- what to back up


def declared_bots(hostvars: Mapping[str, Any]) -> list[dict]:
    """The bots a host's inventory deploys (entries with a name; those marked state: absent are retired)."""
    return [b for b in hostvars.get("bots") or [] if isinstance(b, dict) and isinstance(b.get("name"), str)
            and b.get("state", "present") != "absent"]


def select(hosts: Mapping[str, Mapping], bot: str | None = None,
           host: str | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """({host: its bots to back up}, problems): every bot of every host, or only ``host`` / ``bot``."""
    if host and host not in hosts:
        return {}, [f"{host}: not in the inventory (hosts: {', '.join(sorted(hosts))})"]
    chosen: dict[str, list[str]] = {}
    for name, hv in hosts.items():
        if host and name != host:
            continue
        bots = [b["name"] for b in declared_bots(hv)]
        if bot:
            bots = [b for b in bots if b == bot]
        if bots:
            chosen[name] = bots
    if not chosen:
        where = f"host {host}" if host else "the inventory"
        return {}, [f"bot {bot}: not declared on {where}" if bot else f"{where}: declares no bots: nothing to back up"]
    return chosen, []


# ---------------------------------------------------------------- output


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return ""


def describe(bot: dict) -> str:
    files = sum(entry["type"] == "file" for entry in bot["entries"])
    if bot["method"] == "sqlite-online":
        how = f"online SQLite copy ({', '.join(bot['sqlite'])}), bot not stopped"
    elif bot["method"] == "none":
        how = "no state directory yet (the bot never ran)"
    elif bot["was_running"]:
        how = f"stopped for {bot['stopped_seconds']:.1f} s, started again"
    else:
        how = "was not running (copied as it is, not started)"
    return f"{how}; {files} files, {_size(bot.get('archive_size', 0))} archived"


def summary(backup: Backup) -> str:
    lines = [f"{backup.host}: {backup.directory} (every checksum verified)"]
    for name, bot in sorted(backup.bots.items()):
        lines.append(f"  {name:16} {describe(bot)}")
        lines += [f"  {'':16} warning: {w}" for w in bot.get("warnings") or []]
        lines += [f"  {'':16} skipped: {s}" for s in bot.get("skipped") or []]
    return "\n".join(lines)


# ---------------------------------------------------------------- the run


def run(inventory: Path, bot: str | None = None, host: str | None = None, out: Path = Path("backups"),
        vault_password_file: str | None = None, log=lambda msg: print(msg, file=sys.stderr)) -> int:
    """`invoke bots.backup`: 0 every selected host's backup stored and verified, 1 one failed, 2 bad input."""
    code, report = validate.check(inventory, vault_password_file)
    if code != validate.EXIT_OK:
        print(report, file=sys.stderr)
        return code
    chosen, problems = select(validate.load_inventory(inventory, vault_password_file), bot, host)
    if problems:
        print("bots.backup: " + "\n".join(problems), file=sys.stderr)
        return 2
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime(STAMP_FORMAT, time.gmtime())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out) as tmp:
        extra = ["-e", json.dumps({"backup_bots": [bot] if bot else [], "backup_dest": tmp})]
        log("bots.backup: " + ", ".join(f"{h} ({' '.join(b)})" for h, b in chosen.items()) + " ...")
        args = provision.ansible_args(",".join(chosen), vault_password_file, extra)
        result, stderr = runner.json_playbook(PLAYBOOK, inventory, args)
        if result is None:
            print(f"bots.backup: ansible-playbook failed: {stderr.strip()[-1500:]}", file=sys.stderr)
            return 1
        failures = runner.host_failures(result)
        scripts = runner.task_results(result, "Back up, archive")
        code = 0
        for name in chosen:
            bundle = Path(tmp) / f"{name}.tar"
            if name in failures or not bundle.exists():
                code = 1
                detail = scripts.get(name, {}).get("stdout", "")
                try:
                    why = json.loads(detail).get("error") or failures.get(name, "")
                except ValueError:
                    why = failures.get(name) or "no bundle was fetched"
                print(f"{name}: backup FAILED: {why}", file=sys.stderr)
                continue
            try:
                stored = store(bundle, out / name, stamp)
            except (StateError, OSError, ValueError, tarfile.TarError) as err:
                print(f"{name}: backup FAILED: {err}", file=sys.stderr)
                code = 1
                continue
            print(summary(stored))
    print(f"bots.backup: {'done' if code == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s. Secrets are not in "
          "backups: a rebuild takes them from the vault.")
    return code
