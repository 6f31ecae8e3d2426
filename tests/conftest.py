"""Suite-wide rules: a skipped test is a failure here.

The test setup (scripts/install-deps) installs every tool the tests use, so a
test that would skip is missing something the suite promised; counting it as a
pass would hide exactly that.
"""

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped tests are not allowed in this suite: {report.longrepr}"
