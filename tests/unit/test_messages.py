"""The helper's messages: progress lines and the result line, as the jail writes and the host reads them."""

from __future__ import annotations

import json

import pytest

from snf_image import schemas
from snf_image.contract import messages
from snf_image.contract.constants import HELPER_MAX_LINE, MSG_HELPER, RESULT_MAX_REASON
from snf_image.contract.messages import HelperLine, MessageError, Result


def test_each_line_the_jail_writes_is_valid_and_reads_back() -> None:
    lines = [
        messages.task_start("FixPartitionTable"),
        messages.task_end("FixPartitionTable"),
        messages.warning("careful\n  now"),
        messages.error("it\tbroke"),
    ]
    for line in lines:
        assert schemas.first_error("progress", json.loads(line.to_json()), "helper_line") is None
        assert HelperLine.from_json(line.to_json().encode()) == line
    assert lines[2].messages == ("careful now",) and lines[3].messages == ("it broke",)
    assert json.loads(lines[0].to_json()) == {"subtype": "task-start", "task": "FixPartitionTable"}


def test_long_text_is_cut_to_the_line_limit() -> None:
    line = messages.warning("x" * 100_000)
    assert len(line.to_json()) < HELPER_MAX_LINE and line.messages is not None
    assert line.messages[0].endswith("...")
    assert messages.error("  \n ").messages == ("(no message)",)


def test_the_host_sets_type_and_timestamp() -> None:
    raw = b'{"subtype": "warning", "messages": ["a"], "type": "image-error", "timestamp": -1}'
    message = HelperLine.from_json(raw).to_message(1234.5)
    assert message == {"subtype": "warning", "messages": ["a"], "type": MSG_HELPER, "timestamp": 1234.5}
    assert schemas.first_error("progress", message) is None


def test_stderr_lines_of_the_seed_are_read() -> None:
    line = HelperLine.from_json(b'{"subtype": "error", "stderr": "boom"}')
    assert line.stderr == "boom" and line.messages is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[" * 100_000, "not UTF-8 JSON"),
        (b'["task-start"]', "not a JSON object"),
        (b'{"subtype": "reboot"}', "invalid message .*unknown subtype 'reboot'"),
        (b'{"subtype": "task-start"}', "invalid message .*carries a task"),
        (b'{"subtype": "task-end", "task": "A", "messages": ["x"]}', "invalid message .*carries a task"),
        (b'{"subtype": "warning"}', "invalid message .*either messages or stderr"),
        (b'{"subtype": "warning", "messages": ["a"], "stderr": "b"}', "invalid message .*either messages or stderr"),
        (b'{"subtype": "warning", "task": "A", "messages": ["a"]}', "invalid message .*either messages or stderr"),
        (b'{"subtype": "warning", "messages": ["a"], "extra": 1}', "invalid message .*unknown field 'extra'"),
        (b'{"subtype": "task-end", "task": 7}', "invalid message .*line.task: expected a string"),
        (b'{"subtype": "warning", "messages": "a"}', "invalid message .*expected an array"),
    ],
)
def test_what_is_not_a_line_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        HelperLine.from_json(raw)


def test_result_lines() -> None:
    token = "ab" * 32
    success = Result.succeeded(token)
    assert success.to_line() == f"SUCCESS {token}\n"
    assert token not in repr(success)
    assert Result.parse_line(success.to_line().encode()) == success
    failure = Result.failure("no\nroot  partition")
    assert failure.to_line() == "ERROR: no root partition\n"
    assert Result.parse_line(failure.to_line().encode()) == failure
    assert Result.parse_line(b"SUCCESS\r") == Result(True, token="")  # a claim: the host checks the token
    assert Result.parse_line(b"SUCCESS wrong") == Result(True, token="wrong")
    assert Result.parse_line(b"ERROR:") == Result(False, "")
    for nothing in (b"", b"SUCCESS!", b" SUCCESS", b"OK", b"\xff"):
        assert Result.parse_line(nothing) is None


def test_a_reason_is_one_bounded_line() -> None:
    assert messages.one_line("a\nb\n") == "a b"
    assert messages.one_line("") == "unknown error"
    long = Result.failure("x" * 5000)
    assert len(long.reason) == RESULT_MAX_REASON and long.reason.endswith("...")


def test_detected_properties_are_announced_and_read_back_in_one_format() -> None:
    text = messages.detected("OSFAMILY", "windows-legacy")
    assert text == "Detected OSFAMILY: windows-legacy"  # the original's wording, which operators know
    assert messages.parse_detected(text) == ("OSFAMILY", "windows-legacy")
    assert messages.parse_detected(messages.detected("ROOT_PARTITION", "5")) == ("ROOT_PARTITION", "5")
    for other in ("Detected nothing", "Detected osfamily: linux", "Detected OSFAMILY: ", "OSFAMILY: linux"):
        assert messages.parse_detected(other) is None
