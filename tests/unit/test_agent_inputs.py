"""The agent's checks of its other flags (inputs.py): each value, or BadInput in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from maillab_agent.inputs import parse_credentials, parse_domains, parse_header, parse_rate, read_attachments
from maillab_agent.message import BadInput
from maillab_agent.session import Credentials


@pytest.mark.parametrize(("text", "rate"), [("50/s", 50.0), (" 2.5 ", 2.5), ("0.1/s", 0.1)])
def test_rates(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "0", "-1/s", "nan", "50/m"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(BadInput, match="--rate"):
        parse_rate(text)


def test_a_password_may_hold_colons() -> None:
    assert parse_credentials("user:pa:ss") == Credentials(user="user", password="pa:ss")


@pytest.mark.parametrize("text", ["user", ":pass", "u\udcff:p"])
def test_bad_credentials(text: str) -> None:
    with pytest.raises(BadInput):
        parse_credentials(text)


def test_headers_are_split_at_the_first_colon_and_trimmed() -> None:
    assert parse_header(" X-Test : a: b ") == ("X-Test", "a: b")
    with pytest.raises(BadInput, match="not of the form"):
        parse_header(": value")


def test_domains() -> None:
    assert parse_domains(" a.test, ,b.test ") == ("a.test", "b.test")
    with pytest.raises(BadInput, match="names no domain"):
        parse_domains(" , ")
    with pytest.raises(BadInput):
        parse_domains("a.test,not a domain")


def test_attachments_are_read_with_a_type_from_their_name(tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_bytes(b"a,b\n")
    (tmp_path / "blob").write_bytes(b"\x00\x01")
    notes, blob = read_attachments([tmp_path / "notes.csv", tmp_path / "blob"])
    assert (notes.filename, notes.content_type, notes.data) == ("notes.csv", "text/csv", b"a,b\n")
    assert (blob.filename, blob.content_type) == ("blob", "application/octet-stream")
    with pytest.raises(BadInput, match="not a regular file"):
        read_attachments([Path("/dev/zero")])
    with pytest.raises(BadInput, match="cannot read"):
        read_attachments([tmp_path / "missing"])
