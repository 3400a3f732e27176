"""A tiny SNTP server (RFC 4330) on loopback, so the VM's timesyncd can synchronise offline."""

from __future__ import annotations

import socket
import struct
import threading
import time

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970


def _ntp_time(now: float) -> bytes:
    seconds = int(now) + NTP_EPOCH_OFFSET
    fraction = int((now % 1) * 2**32)
    return struct.pack("!II", seconds, fraction)


class SNTPServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 123) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for attempt in range(30):  # another test run's server may still hold the port for a moment
            try:
                self.sock.bind((host, port))
                break
            except OSError:
                if attempt == 29:
                    raise
                time.sleep(1)
        self.sock.settimeout(0.5)
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                continue
            received = time.time()
            if len(data) < 48:
                continue
            self.requests += 1
            version = (data[0] >> 3) & 0x7
            header = bytes([(0 << 6) | (version << 3) | 4, 1, data[2], 0xEC])  # LI=0, server mode, stratum 1
            reply = (header + struct.pack("!II", 0, 0) + b"LOCL" + _ntp_time(received)
                     + data[40:48] + _ntp_time(received) + _ntp_time(time.time()))
            self.sock.sendto(reply, peer)

    def __enter__(self) -> "SNTPServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
