"""What the helper image builder says while it works (on stderr: it runs from a terminal or a test)."""

import sys


def log(msg: str) -> None:
    print(f"helper-build: {msg}", file=sys.stderr, flush=True)
