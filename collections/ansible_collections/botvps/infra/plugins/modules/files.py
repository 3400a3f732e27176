#!/usr/bin/python
# -*- coding: utf-8 -*-
"""botvps.infra.files: write many files/directories in one module call, atomically."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: files
short_description: Manage many files and directories in one call, all-or-nothing
version_added: "0.1.0"
description:
  - Writes, creates or removes a list of files and directories with a single module
    invocation, so a role needs one round trip instead of one per file.
  - Idempotent. Content bytes, mode, owner and group are compared; only what differs is
    changed. When only mode or ownership differ the content is not rewritten.
  - "All-or-nothing as far as possible. Phase 1: the free space of every target filesystem
    is checked (the sum of the new contents landing on a filesystem plus O(min_free_kb)),
    and the module fails before anything is written if it is short. Phase 2: every changed
    file is written to a temporary file (prefix C(.botvps-tmp-)) next to its target (or in
    its nearest existing parent directory when the target directory does not exist yet),
    fsynced, chowned and chmodded, then its O(files[].validate) command runs. If any
    validation fails, all temporary files are deleted and nothing on the host has been
    changed. Phase 3: missing directories are created, temporary files are renamed into
    place with C(os.replace), modes/owners are fixed, absent paths are removed, and the
    affected directories are fsynced."
  - A run killed at any point leaves every target either old or new, never truncated.
    Stale C(.botvps-tmp-*) files left by a killed run are removed from the directories
    the module works in on the next (non check mode) run.
  - Uses only the Python standard library and C(ansible.module_utils.basic).
author:
  - botvps
options:
  files:
    description: The files and directories to manage.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path of the target.
        type: str
        required: true
      state:
        description:
          - V(file) writes O(files[].content) to the path.
          - V(directory) creates the directory and its missing parents (parents not listed
            themselves get mode C(0755) and the user running the module, root under become).
          - V(absent) removes a file, symlink or directory tree.
        type: str
        choices: [file, directory, absent]
        default: file
      content:
        description:
          - Content of the file, required with O(files[].state=file) (may be empty).
          - Declared C(no_log), so it is masked in the invocation shown with C(-vvv).
        type: str
      mode:
        description:
          - Octal permissions as a quoted string, for example V("0640").
          - Required for O(files[].state=file) and O(files[].state=directory). An unquoted
            YAML number is refused because it is easy to get wrong.
        type: raw
      owner:
        description: User name or numeric uid.
        type: str
        default: root
      group:
        description: Group name or numeric gid.
        type: str
        default: root
      validate:
        description:
          - Command run against the temporary file before anything is replaced. Must contain
            C(%s), which is replaced by the temporary file's path, e.g.
            C(/usr/sbin/visudo -cf %s). Run without a shell.
        type: str
      secret:
        description:
          - The content is never returned or diffed; the diff only says that the secret
            content changed, and a failing validator's output is not returned either.
        type: bool
        default: false
  min_free_kb:
    description: Free space (KiB) that must remain on a filesystem after all its new files are written.
    type: int
    default: 1024
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Symbolic links are never followed or replaced for O(files[].state=file) and
    O(files[].state=directory); such a target is an error. V(absent) removes the link itself.
  - Secret contents stay in Ansible's C(no_log) mask, which replaces them wherever they
    appear in the result; a trivially short secret (say V(yes)) would also mask paths.
  - Two concurrent runs writing into the same directory are not supported (each removes
    the other's temporary files).
"""

EXAMPLES = r"""
- name: Write the sudoers drop-in and the bot's config in one call
  botvps.infra.files:
    files:
      - path: /etc/botvps
        state: directory
        mode: "0750"
        group: bot
      - path: /etc/botvps/bot.toml
        content: "{{ lookup('ansible.builtin.template', 'bot.toml.j2') }}"
        mode: "0640"
        group: bot
      - path: /etc/botvps/api.key
        content: "{{ vault_api_key }}"
        mode: "0600"
        owner: bot
        secret: true
      - path: /etc/sudoers.d/botvps
        content: "bot ALL=(root) NOPASSWD: /usr/bin/systemctl restart bot\n"
        mode: "0440"
        validate: /usr/sbin/visudo -cf %s
      - path: /etc/botvps/old.conf
        state: absent
"""

RETURN = r"""
changed_paths:
  description: Paths that were (or in check mode would be) created, rewritten, re-moded, re-owned or removed.
  returned: always
  type: list
  elements: str
  sample: ["/etc/botvps/bot.toml", "/etc/sudoers.d/botvps"]
stale_temp_removed:
  description: Leftover C(.botvps-tmp-*) files of an earlier killed run that were deleted.
  returned: always
  type: list
  elements: str
  sample: []
diff:
  description:
    - In diff mode, a list in the standard Ansible diff format, printed by C(--diff).
    - Content changes of non-secret files have C(before), C(after), C(before_header) and
      C(after_header) text. State, mode and ownership changes are separate entries whose
      C(before)/C(after) are dicts. Secret content changes only have a C(prepared) line.
  returned: when diff mode is on
  type: list
  elements: dict
"""

import grp
import os
import pwd
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_text

TMP_PREFIX = ".botvps-tmp-"
NO_LOG_PLACEHOLDER = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
MODE_RE = re.compile(r"^[0-7]{3,4}$")

ARGUMENT_SPEC = dict(
    files=dict(
        type="list",
        elements="dict",
        required=True,
        options=dict(
            path=dict(type="str", required=True),
            state=dict(type="str", default="file", choices=["file", "directory", "absent"]),
            content=dict(type="str", no_log=True),
            mode=dict(type="raw"),
            owner=dict(type="str", default="root"),
            group=dict(type="str", default="root"),
            validate=dict(type="str"),
            secret=dict(type="bool", default=False),
        ),
    ),
    min_free_kb=dict(type="int", default=1024),
)


class FilesError(Exception):
    """A failure reported to the user with fail_json."""


@dataclass
class Spec:
    """One validated item of the `files` option."""

    path: str
    state: str
    content: bytes | None
    mode: int | None
    uid: int
    gid: int
    validate: str | None
    secret: bool


@dataclass
class Change:
    """What has to happen to one target; built by plan()."""

    spec: Spec
    exists: bool  # the target exists now (lstat)
    write: bool = False  # new content must be written (via a temp file)
    fix_mode: bool = False
    fix_owner: bool = False
    before: bytes | None = None  # old content of a file, for the diff
    before_attrs: dict = field(default_factory=dict)
    stage_dir: str = ""  # where the temp file goes (same filesystem as the target)
    tmp: str | None = None

    @property
    def changed(self) -> bool:
        if self.spec.state == "absent":
            return self.exists
        return not self.exists or self.write or self.fix_mode or self.fix_owner


# ---------------------------------------------------------------- option parsing


def parse_mode(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise FilesError(
            f"{path}: mode must be a quoted octal string like \"0640\", got {value!r} "
            f"({type(value).__name__}); an unquoted YAML number is refused"
        )
    if not MODE_RE.match(value):
        raise FilesError(f"{path}: mode {value!r} is not an octal string like \"0640\"")
    return int(value, 8)


def resolve_id(value: str, kind: str, path: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        if kind == "owner":
            return pwd.getpwnam(value).pw_uid
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise FilesError(f"{path}: unknown {kind} {value!r}") from None


def build_spec(item: dict) -> Spec:
    path = item["path"]
    if not os.path.isabs(path):
        raise FilesError(f"{path}: path must be absolute")
    path = os.path.normpath(path)
    state = item["state"]
    content = item["content"]
    if state == "file" and content is None:
        raise FilesError(f"{path}: content is required with state=file")
    if state != "file" and content is not None:
        raise FilesError(f"{path}: content is only allowed with state=file")
    if state == "directory" and item["validate"]:
        raise FilesError(f"{path}: validate is only allowed with state=file")
    if item["validate"] and "%s" not in item["validate"]:
        raise FilesError(f"{path}: validate must contain %s (the temporary file)")
    mode = None
    if state != "absent":
        if item["mode"] is None:
            raise FilesError(f"{path}: mode is required with state={state} (e.g. mode: \"0640\")")
        mode = parse_mode(item["mode"], path)
    return Spec(
        path=path,
        state=state,
        content=None if content is None else to_bytes(content, errors="surrogate_or_strict"),
        mode=mode,
        uid=resolve_id(item["owner"], "owner", path),
        gid=resolve_id(item["group"], "group", path),
        validate=item["validate"],
        secret=item["secret"],
    )


def build_specs(items: list[dict]) -> list[Spec]:
    specs = [build_spec(item) for item in items]
    seen: set[str] = set()
    for spec in specs:
        if spec.path in seen:
            raise FilesError(f"{spec.path}: listed more than once")
        seen.add(spec.path)
    return specs


# ---------------------------------------------------------------- planning


def nearest_existing_dir(path: str) -> str:
    """The deepest existing ancestor of `path` (following symlinked parents)."""
    current = os.path.dirname(path)
    while not os.path.lexists(current):
        current = os.path.dirname(current)
    if not os.path.isdir(current):
        raise FilesError(f"{path}: parent {current} exists but is not a directory")
    return current


def describe(st: os.stat_result | None) -> dict:
    if st is None:
        return {"state": "absent"}
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
    return {"state": kind, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "owner": st.st_uid, "group": st.st_gid}


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def plan(spec: Spec) -> Change:
    try:
        st: os.stat_result | None = os.lstat(spec.path)
    except FileNotFoundError:
        st = None
    change = Change(spec=spec, exists=st is not None, before_attrs=describe(st))
    if spec.state == "absent" or st is None:
        change.write = spec.state == "file"
        change.stage_dir = nearest_existing_dir(spec.path) if spec.state != "absent" else ""
        return change
    if stat.S_ISLNK(st.st_mode):
        raise FilesError(f"{spec.path}: is a symbolic link; refusing to follow or replace it")
    if spec.state == "directory" and not stat.S_ISDIR(st.st_mode):
        raise FilesError(f"{spec.path}: exists and is not a directory")
    if spec.state == "file" and not stat.S_ISREG(st.st_mode):
        raise FilesError(f"{spec.path}: exists and is not a regular file")
    change.fix_mode = stat.S_IMODE(st.st_mode) != spec.mode
    change.fix_owner = (st.st_uid, st.st_gid) != (spec.uid, spec.gid)
    if spec.state == "file":
        change.before = read_bytes(spec.path)
        change.write = change.before != spec.content
        change.stage_dir = os.path.dirname(spec.path)
    return change


# ---------------------------------------------------------------- phase 1: space


def check_space(changes: list[Change], min_free_kb: int) -> None:
    """Fail unless every filesystem has room for all its new files plus the margin."""
    needs: dict[int, list[Change]] = {}
    for change in changes:
        if change.write:
            needs.setdefault(os.stat(change.stage_dir).st_dev, []).append(change)
    for group in needs.values():
        needed = sum(len(c.spec.content or b"") for c in group) + min_free_kb * 1024
        vfs = os.statvfs(group[0].stage_dir)
        available = vfs.f_bavail * vfs.f_frsize
        if needed > available:
            paths = ", ".join(c.spec.path for c in group)
            raise FilesError(
                f"not enough free space for {paths}: need {needed} bytes "
                f"(content + min_free_kb={min_free_kb}), {available} bytes available"
            )


# ---------------------------------------------------------------- phase 2: stage


def ancestors(path: str) -> list[str]:
    """Every directory above `path`: temp files live in the nearest existing one."""
    result = []
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        result.append(path)
    return result


def remove_stale_temps(dirs: set[str]) -> list[str]:
    removed = []
    for directory in sorted(dirs):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if name.startswith(TMP_PREFIX) and os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
    return removed


def write_temp(change: Change) -> None:
    spec = change.spec
    fd, change.tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=change.stage_dir)
    with os.fdopen(fd, "wb") as handle:
        handle.write(spec.content or b"")
        handle.flush()
        os.fsync(handle.fileno())
        os.fchown(handle.fileno(), spec.uid, spec.gid)  # before chmod: chown clears setuid bits
        os.fchmod(handle.fileno(), spec.mode or 0)


def run_validate(module: AnsibleModule, change: Change) -> None:
    spec = change.spec
    if not spec.validate:
        return
    rc, out, err = module.run_command(spec.validate.replace("%s", change.tmp or ""))
    if rc == 0:
        return
    if spec.secret:
        detail = "output hidden because the file is secret"
    else:
        detail = (to_text(out) + to_text(err)).strip() or "no output"
    raise FilesError(f"{spec.path}: validation failed (rc={rc}, {spec.validate}): {detail}; nothing was changed")


def discard_temps(changes: list[Change]) -> None:
    for change in changes:
        if change.tmp and os.path.lexists(change.tmp):
            os.unlink(change.tmp)
        change.tmp = None


def stage(module: AnsibleModule, changes: list[Change]) -> None:
    """Write and validate every temp file; on any failure remove them all and re-raise."""
    try:
        for change in changes:
            if change.write:
                write_temp(change)
        for change in changes:
            if change.write:
                run_validate(module, change)
    except BaseException:
        discard_temps(changes)
        raise


# ---------------------------------------------------------------- phase 3: commit


def set_attrs(path: str, mode: int, uid: int, gid: int) -> None:
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def make_dirs(path: str, explicit: dict[str, Spec], created: list[str]) -> None:
    """Create `path` and its missing parents; listed directories get their own mode/owner."""
    if os.path.isdir(path):
        return
    make_dirs(os.path.dirname(path), explicit, created)
    spec = explicit.get(path)
    os.mkdir(path, 0o700)
    if spec:
        set_attrs(path, spec.mode or 0, spec.uid, spec.gid)
    else:
        set_attrs(path, 0o755, os.geteuid(), os.getegid())
    created.append(path)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        if path == "/":
            raise FilesError("refusing to remove /")
        shutil.rmtree(path)
    else:
        os.unlink(path)


def apply_change(change: Change, explicit: dict[str, Spec], created: list[str]) -> None:
    spec = change.spec
    if spec.state == "absent":
        remove_path(spec.path)
        return
    if spec.state == "directory":
        make_dirs(spec.path, explicit, created)
    else:
        make_dirs(os.path.dirname(spec.path), explicit, created)
        if change.tmp:
            os.replace(change.tmp, spec.path)
            change.tmp = None
            return
    if change.fix_mode or change.fix_owner:
        set_attrs(spec.path, spec.mode or 0, spec.uid, spec.gid)


def commit(changes: list[Change]) -> list[str]:
    """Apply every planned change; returns the directories that must be fsynced."""
    explicit = {c.spec.path: c.spec for c in changes if c.spec.state == "directory"}
    created: list[str] = []
    for change in changes:
        apply_change(change, explicit, created)
    return sorted({os.path.dirname(c.spec.path) for c in changes} | {os.path.dirname(p) for p in created})


# ---------------------------------------------------------------- reporting


def text_or_none(data: bytes | None) -> str | None:
    if data is None:
        return ""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def diff_entries(change: Change) -> list[dict]:
    spec = change.spec
    entries = []
    after_attrs = {"state": spec.state}
    if spec.state != "absent":
        after_attrs.update(mode=f"{spec.mode:04o}", owner=spec.uid, group=spec.gid)
    if after_attrs != change.before_attrs:
        header = f"{spec.path} (attributes)"
        entries.append({"before_header": header, "after_header": header,
                        "before": dict(change.before_attrs, path=spec.path),
                        "after": dict(after_attrs, path=spec.path)})
    if change.write and spec.secret:
        entries.append({"prepared": f"{spec.path}: secret content changed (not shown)\n"})
    elif change.write:
        before = text_or_none(change.before)
        if before is None:
            entries.append({"prepared": f"{spec.path}: old content is binary, diff not shown\n"})
        else:
            entries.append({"before_header": spec.path, "after_header": spec.path,
                            "before": before, "after": to_text(spec.content)})
    return entries


def sanitized_invocation(params: dict) -> dict:
    """module_args for the result, with every content masked (it is declared no_log)."""
    files = [dict(item, content=NO_LOG_PLACEHOLDER if item.get("content") is not None else None)
             for item in params["files"]]
    return {"module_args": dict(params, files=files)}


def unmask_public_content(module: AnsibleModule) -> None:
    """Let non-secret content reach the diff.

    AnsibleModule masks every no_log value (all contents) in its results, which would turn
    every diff into '********'. Only secret contents stay masked; the invocation is
    sanitized separately by sanitized_invocation().
    """
    public = {item["content"] for item in module.params["files"] if item["content"] and not item["secret"]}
    secret = {item["content"] for item in module.params["files"] if item["content"] and item["secret"]}
    module.no_log_values.difference_update(public - secret)


# ---------------------------------------------------------------- main


def run(module: AnsibleModule) -> dict:
    if module.params["min_free_kb"] < 0:
        raise FilesError("min_free_kb must not be negative")
    specs = build_specs(module.params["files"])
    stale: list[str] = []
    if not module.check_mode:
        stale = remove_stale_temps({d for s in specs for d in ancestors(s.path)})
    changes = [c for c in (plan(spec) for spec in specs) if c.changed]
    check_space(changes, module.params["min_free_kb"])
    result: dict = {
        "changed": bool(changes),
        "changed_paths": [c.spec.path for c in changes],
        "stale_temp_removed": stale,
    }
    if module._diff:
        result["diff"] = [entry for c in changes for entry in diff_entries(c)]
    if module.check_mode or not changes:
        return result
    stage(module, changes)
    try:
        sync_dirs = commit(changes)
    except OSError as exc:
        raise FilesError(f"failed while applying changes, some may be applied: {exc}") from exc
    finally:
        discard_temps(changes)
    for directory in sync_dirs:
        if os.path.isdir(directory):
            fsync_dir(directory)
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    unmask_public_content(module)
    invocation = sanitized_invocation(module.params)
    try:
        result = run(module)
    except (FilesError, OSError) as exc:
        module.fail_json(msg=str(exc), invocation=invocation)
    module.exit_json(invocation=invocation, **result)


if __name__ == "__main__":
    main()
