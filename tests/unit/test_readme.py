"""The README's task table is generated from the task modules: it must not drift from them."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_task_table_matches_the_task_modules():
    generated = subprocess.run(
        ["/usr/bin/python3", str(REPO / "scripts" / "task-table")], capture_output=True, text=True, check=True
    ).stdout
    readme = (REPO / "README.md").read_text()
    in_readme = readme.split("<!-- task-table:begin -->\n", 1)[1].split("<!-- task-table:end -->", 1)[0]
    assert in_readme == generated, "the README's task table is stale: run scripts/task-table --update"
