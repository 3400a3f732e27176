"""VM tests: a package, so that its conftest does not shadow tests/host's in a shared pytest session."""
