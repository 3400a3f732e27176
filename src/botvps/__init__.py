"""botvps: harden a VPS for self-hosted crypto trading bots, prove it, keep proving it."""

import os

__version__ = "0.1.0"


def _open_standard_descriptors() -> None:
    """A closed stdin, stdout or stderr becomes /dev/null: otherwise the next file botvps opens takes its number,
    and every program it starts would read from (or write into) that file."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


_open_standard_descriptors()
