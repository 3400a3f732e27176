"""Start, find and stop throwaway VMs: copy-on-write overlays, user-mode networking on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from botvps import paths
from botvps.vm import accel, aptcache, image
from botvps.vm.qga import AgentError, GuestAgent

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
HANDOVER_USERS = ("root", "debian")
# Run as root in the guest: ufw's SSH limit (6 new connections from one source in 30 s) forgets every source.
FORGET_SSH_COUNTS = "for f in /proc/net/xt_recent/*; do echo / > $f; done"
# Run as root in the guest around a restore: close its side of every TCP connection with the controller (QEMU's user
# networking shows the controller as 10.0.2.2, with the controller's own source ports). The restored guest still
# holds the connections it had when the snapshot was saved; a new connection from one of their ports would meet
# that stale socket and wait seconds for sshd's banner, or never get it.
CLOSE_CONTROLLER_CONNECTIONS = "ss -K dst 10.0.2.2"


class VMError(RuntimeError):
    pass


@dataclass
class VM:
    name: str
    suite: str
    user: str
    ssh_port: int
    password: str
    accel: str
    forwards: dict[str, int] = field(default_factory=dict)  # guest port -> host port on 127.0.0.1
    memory_mb: int = 1024
    cpus: int = 2

    @property
    def directory(self) -> Path:
        return paths.vms_dir() / self.name

    @property
    def key_file(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def pid_file(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qga_socket(self) -> Path:
        return self.directory / "qga.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"

    def console(self) -> GuestAgent:
        return GuestAgent(self.qga_socket)

    def pid(self) -> int | None:
        return _qemu_pid(self.directory)

    def running(self) -> bool:
        return self.pid() is not None

    def ssh_options(self) -> list[str]:
        return [
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
        ]

    def ssh_command(self, user: str | None = None) -> list[str]:
        return ["ssh", "-i", str(self.key_file), "-p", str(self.ssh_port), *self.ssh_options(),
                f"{user or self.user}@127.0.0.1"]

    def inventory_vars(self, user: str | None = None) -> dict[str, object]:
        return {
            "ansible_host": "127.0.0.1",
            "ansible_port": self.ssh_port,
            "ansible_user": user or self.user,
            "ansible_ssh_private_key_file": str(self.key_file),
            "ansible_ssh_common_args": " ".join(self.ssh_options()[:6]),
        }

    def write(self) -> None:
        (self.directory / "vm.json").write_text(json.dumps(asdict(self), indent=2))

    def qmp(self, command: str, arguments: dict | None = None, timeout: float = 10) -> dict:
        """One QEMU monitor command (system_reset, set_link, ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.qmp_socket))
            reader = sock.makefile("rb")
            json.loads(reader.readline())  # greeting
            for message in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments or {}}):
                sock.sendall(json.dumps(message).encode() + b"\n")
                while True:
                    reply = json.loads(reader.readline())
                    if "event" not in reply:
                        break
                if "error" in reply:
                    raise VMError(f"QEMU monitor refused {command}: {reply['error']}")
            return reply

    def hard_reset(self) -> None:
        self.qmp("system_reset")

    def set_link(self, up: bool) -> None:
        self.qmp("set_link", {"name": "net0", "up": up})

    def pause(self) -> None:
        """Freeze the guest (QMP stop): to the world it is a server that stopped answering."""
        self.qmp("stop")

    def resume(self) -> None:
        self.qmp("cont")

    def _monitor(self, command_line: str, timeout: float) -> None:
        """An HMP command through QMP; HMP reports failure as text, which is raised."""
        output = str(self.qmp("human-monitor-command", {"command-line": command_line}, timeout=timeout)
                     .get("return", "")).strip()
        if output:
            raise VMError(f"VM {self.name}: {command_line}: {output}")

    def snapshots(self) -> list[str]:
        """The tags of the internal snapshots in the VM's disk (QMP query-block)."""
        tags = []
        for device in self.qmp("query-block").get("return", []):
            image = (device.get("inserted") or {}).get("image") or {}
            tags += [snapshot["name"] for snapshot in image.get("snapshots", [])]
        return tags

    def save(self, tag: str, timeout: float = 600) -> float:
        """Save the running guest whole (disk and memory) as internal snapshot ``tag``; seconds taken.

        The guest is paused while QEMU writes its memory into the disk's qcow2 and runs on afterwards.
        """
        started = time.monotonic()
        self._monitor(f"savevm {tag}", timeout)
        self._set_clock()  # the guest's clock stood still while it was paused
        return time.monotonic() - started

    def restore(self, tag: str, timeout: float = 600) -> float:
        """Put the guest back exactly as it was when ``tag`` was saved; seconds taken.

        The guest then runs on from that instant, so afterwards its clock is set to now (timesyncd,
        which watches for clock jumps, then measures it again), and the connections between the controller and
        the guest are closed on both sides: the controller's multiplexed SSH connections, which the guest no
        longer knows, and the guest's side of those it held when ``tag`` was saved, which the controller no
        longer has.
        """
        started = time.monotonic()
        # First while the guest still knows them, so that QEMU's user networking forgets them too: closed after the
        # restore instead, they would linger there half-closed and take the next connection from the same port.
        drop_control_sockets(self)
        try:
            GuestAgent(self.qga_socket, timeout=10).run(CLOSE_CONTROLLER_CONNECTIONS, timeout=10)
        except (OSError, AgentError):
            pass  # a guest that does not answer (paused, hung) is restored all the same
        self._monitor(f"loadvm {tag}", timeout)
        self._set_clock()
        closed = self.console().run(CLOSE_CONTROLLER_CONNECTIONS, timeout=30)
        if closed.exit_code != 0:
            raise VMError(f"VM {self.name}: could not close its stale connections: {closed.stderr or closed.stdout}")
        return time.monotonic() - started

    def delete(self, tag: str, timeout: float = 120) -> None:
        """Delete the internal snapshot ``tag``."""
        self._monitor(f"delvm {tag}", timeout)

    def _set_clock(self) -> None:
        """Set the guest's clock to the controller's through the guest agent (after a pause, save or restore)."""
        agent = self.console()
        agent.wait(60)
        # The guest's offset, read twice; the read with the shorter round trip counts (its error is at most half
        # of it). The guest then shifts its own clock by it, so the agent's delay in starting that does not count.
        readings = []
        for _ in range(2):
            before = time.time()
            guest = agent.run("date +%s.%N", timeout=30)
            after = time.time()
            if guest.exit_code == 0:
                readings.append((after - before, (before + after) / 2 - float(guest.stdout)))
        if not readings:
            raise VMError(f"VM {self.name}: could not read its clock")
        offset = min(readings)[1]
        shift = f"import time; time.clock_settime(time.CLOCK_REALTIME, time.time() + {offset:.6f})"
        set_clock = agent.run(f"python3 -c '{shift}'", timeout=30)
        if set_clock.exit_code != 0:
            raise VMError(f"VM {self.name}: could not set its clock: {set_clock.stderr}")


def _qemu_pid(directory: Path) -> int | None:
    """The pid of the qemu process that runs the VM in ``directory``, if it is alive."""
    try:
        pid = int((directory / "qemu.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"qemu-system" in cmdline and str(directory).encode() in cmdline else None


def load(name: str) -> VM:
    path = paths.vms_dir() / name / "vm.json"
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise VMError(f"no VM named {name!r} (see: invoke vm.list)") from None
    return VM(**data)


def list_vms() -> list[VM]:
    found = []
    for entry in sorted(paths.vms_dir().glob("*/vm.json")):
        try:
            found.append(load(entry.parent.name))
        except (VMError, TypeError, ValueError):
            continue
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ssh_banner(vm: VM, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not vm.running():
            raise VMError(f"VM {vm.name} exited during boot; see {vm.serial_log}")
        try:
            with socket.create_connection(("127.0.0.1", vm.ssh_port), timeout=2) as sock:
                sock.settimeout(5)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise VMError(f"VM {vm.name}: no SSH on 127.0.0.1:{vm.ssh_port} after {timeout:.0f} s; see {vm.serial_log}")


def _pin_host_key(vm: VM) -> None:
    """Trust the host key read through the console, not whatever answers on the port."""
    agent = vm.console()
    agent.wait(60)
    result = agent.run("cat /etc/ssh/ssh_host_ed25519_key.pub")
    if result.exit_code != 0:
        raise VMError(f"VM {vm.name}: cannot read its SSH host key: {result.stderr}")
    key = " ".join(result.stdout.split()[:2])
    # Every forwarded port may carry sshd (a port-change drill moves it to one of them).
    ports = [vm.ssh_port, *vm.forwards.values()]
    vm.known_hosts.write_text(",".join(f"[127.0.0.1]:{port}" for port in ports) + f" {key}\n")


def _qemu_command(vm: VM, img: image.Image) -> list[str]:
    forwards = ",".join(
        [f"hostfwd=tcp:127.0.0.1:{vm.ssh_port}-:22"]
        + [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in vm.forwards.items()]
    )
    pubkey = vm.key_file.with_suffix(".pub").read_text().strip()
    cmdline = " ".join([
        "root=/dev/vda", "rw", "console=ttyS0", "systemd.hostname=" + vm.name,
        "botvps.user=" + vm.user,
        "botvps.key=" + base64.b64encode(pubkey.encode()).decode(),
        "botvps.password=" + vm.password,
    ])
    cpu = ["-cpu", "host"] if vm.accel == "kvm" else ["-cpu", "max"]
    return [
        "qemu-system-x86_64", "-name", vm.name, "-accel", vm.accel, *cpu,
        "-m", str(vm.memory_mb), "-smp", str(vm.cpus),
        "-nodefaults", "-display", "none", "-daemonize",
        "-pidfile", str(vm.pid_file), "-serial", f"file:{vm.serial_log}",
        "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", cmdline,
        "-drive", f"file={vm.directory / 'disk.qcow2'},if=virtio,format=qcow2,discard=unmap",
        "-netdev", f"user,id=net0,{forwards}", "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-chardev", f"socket,id=qga0,path={vm.qga_socket},server=on,wait=off",
        "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-qmp", f"unix:{vm.qmp_socket},server=on,wait=off",
    ]


def up(
    name: str,
    suite: str = "bookworm",
    user: str = "root",
    forwards: tuple[int, ...] = (),
    memory_mb: int = 1024,
    cpus: int = 2,
    boot_timeout: float = 180.0,
    log=print,
    apt_cache: bool | None = None,
    snapshot: str | None = None,
) -> VM:
    """Boot a fresh VM handed over as a provider would (``root`` or ``debian`` with a key); with ``snapshot``,
    save it as that internal snapshot once it answers (drills that start before anything is provisioned
    restore it instead of booting another VM)."""
    if not NAME_RE.match(name):
        raise VMError(f"VM name {name!r}: use lowercase letters, digits and '-', starting with a letter or digit")
    if user not in HANDOVER_USERS:
        raise VMError(f"handover user {user!r}: use one of {', '.join(HANDOVER_USERS)}")
    existing = paths.vms_dir() / name
    if existing.exists():
        try:
            if load(name).running():
                raise VMError(f"VM {name} is already running (invoke vm.down {name} first)")
        except (VMError, TypeError) as err:
            if "already running" in str(err):
                raise
        shutil.rmtree(existing)
    img = image.ensure(suite, log=log)
    vm = VM(
        name=name, suite=img.suite, user=user, ssh_port=free_port(),
        password=secrets.token_hex(12), accel=accel.choose(img.kernel),
        forwards={str(port): free_port() for port in forwards}, memory_mb=memory_mb, cpus=cpus,
    )
    vm.directory.mkdir(parents=True)
    vm.directory.chmod(0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"botvps-{name}", "-f", str(vm.key_file)],
                   check=True, stdin=subprocess.DEVNULL)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(img.disk), "-F", "qcow2", str(vm.directory / "disk.qcow2")],
        check=True, stdin=subprocess.DEVNULL,
    )
    vm.write()
    started = time.monotonic()
    # QEMU gets a stdin of its own: it must never change the operator's terminal (see accel.kvm_boots).
    result = subprocess.run(_qemu_command(vm, img), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        shutil.rmtree(vm.directory, ignore_errors=True)
        raise VMError(f"qemu failed to start {name}: {result.stderr.strip()}")
    try:
        _wait_ssh_banner(vm, boot_timeout)
        _pin_host_key(vm)
        if aptcache.wanted() if apt_cache is None else apt_cache:
            pointed = vm.console().run(aptcache.guest_command(aptcache.ensure(log)), timeout=60)
            if pointed.exit_code != 0:
                raise VMError(f"could not point {name}'s apt at the cache: {pointed.stderr}")
    except BaseException:
        down(name)
        raise
    log(f"VM {name} (Debian {image.SUITES[vm.suite]}, {vm.accel}) reached SSH in {time.monotonic() - started:.1f} s "
        f"on 127.0.0.1:{vm.ssh_port}")
    if snapshot:
        log(f"VM {name}: saved as snapshot {snapshot!r} in {vm.save(snapshot):.1f} s")
    return vm


def wait_ssh(vm: VM, timeout: float = 180.0) -> None:
    """After a reboot or reset: wait until sshd runs again, asking the guest agent (out of band).

    Polling the SSH port instead would trip a provisioned VM's firewall: ufw's limit (6 new
    connections per 30 s) counts every SYN QEMU's user network retransmits, and the block renews
    itself while the polling goes on.
    """
    deadline = time.monotonic() + timeout
    agent = vm.console()
    while time.monotonic() < deadline:
        if not vm.running():
            raise VMError(f"VM {vm.name} is not running; see {vm.serial_log}")
        try:
            if agent.run("systemctl is-active --quiet ssh.service || systemctl is-active --quiet ssh.socket",
                         timeout=15).exit_code == 0:
                return
        except (OSError, AgentError):
            pass
        time.sleep(2)
    raise VMError(f"VM {vm.name}: sshd not running {timeout:.0f} s after the reboot; see {vm.serial_log}")


def drop_control_sockets(vm: VM) -> list[Path]:
    """Close the controller's multiplexed SSH connections to ``vm`` (every port it forwards); the closed sockets."""
    closed = []
    for port in {vm.ssh_port, *vm.forwards.values()}:
        for socket_path in paths.control_dir().glob(f"127.0.0.1-{port}-*"):
            subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "botvps-vm"],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=10)
            socket_path.unlink(missing_ok=True)
            closed.append(socket_path)
    return closed


def down(name: str) -> bool:
    """Stop the VM and delete its overlay; True when a qemu process was stopped."""
    directory = paths.vms_dir() / name
    try:
        drop_control_sockets(load(name))
    except (VMError, TypeError, ValueError, OSError, subprocess.SubprocessError):
        pass
    stopped = False
    pid = _qemu_pid(directory)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        stopped = True
    shutil.rmtree(directory, ignore_errors=True)
    return stopped


def down_all(prefix: str = "") -> list[str]:
    names = [d.name for d in paths.vms_dir().glob("*") if d.is_dir() and d.name.startswith(prefix)]
    for name in names:
        down(name)
    return names
