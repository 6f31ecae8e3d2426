"""The jail's start imports only what every deployment needs: heavy libraries wait for the task that uses them.

Under TCG each import costs ~15x what it costs here; PyYAML (cloud-init and
netplan images only) and passlib (password hashing only) cost ~0.1 s each of
the helper's boot, so the tasks import them where they use them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAZY = {"yaml", "passlib", "lxml", "hivex"}


def test_runner_and_tasks_load_without_the_heavy_libraries() -> None:
    code = (
        "import json, sys; import helper.runner; from helper import framework; framework.discover(); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    assert "tasks" in loaded
    assert loaded & LAZY == set()
