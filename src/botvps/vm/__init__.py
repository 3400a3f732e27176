"""A throwaway local VPS: Debian images built from Debian's packages, booted with QEMU."""
