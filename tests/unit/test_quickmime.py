"""quickmime against the email package: whenever it answers, the same text body and attachments.

The shapes programs send (the agent's batch messages among them) must be read quickly; any
message, mutated however, is either read as model.read_contents reads it, or left to it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from email.message import EmailMessage
from email.policy import SMTP

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maillab_common.forward import Record, parse_records, render_record
from maillab_inspector import quickmime
from maillab_inspector.model import catalogue_entry, read_contents
from tests.helpers import BASE, MULTIPART
from tests.hostile import hostile_messages


def as_record(message: bytes) -> Record:
    (record,), _ = parse_records(render_record(replace(BASE, message=message)))
    assert isinstance(record, Record)
    return record


def stored(message: EmailMessage) -> bytes:
    """The bytes as the server stores them: LF line ends."""
    return message.as_bytes(policy=SMTP).replace(b"\r\n", b"\n")


def agrees(message: bytes) -> bool:
    """Whether quickmime reads `message` (asserting it reads it as the email package does)."""
    record = as_record(message)
    quick = quickmime.contents(record.delivery.message)
    if quick is None:
        return False
    slow = read_contents(record)
    assert not slow.problem, slow.problem
    assert quick.text == slow.text
    assert quick.attachments == slow.attachments
    assert quick.fields == list(slow.headers.raw_items())
    return True


def batch_message(number: int, attachments: int, html: bool = False) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "agent@agent.test"
    message["To"] = f"user{number}@one.test, other@two.test"
    message["Subject"] = f"test message {number}"
    message["Message-ID"] = f"<{number}.batch@agent.test>"
    message.set_content(f"Hello {number}.\n--not a boundary\nFrom the agent\n\nYour code is {100000 + number}.\n")
    if html:
        message.add_alternative(f"<p>Hello <b>{number}</b></p>", subtype="html")
    for index in range(attachments):
        message.add_attachment(
            os.urandom(1024 + index), maintype="application", subtype="octet-stream", filename=f"a{index}.bin"
        )
    return message


@pytest.mark.parametrize("attachments", [0, 1, 3])
@pytest.mark.parametrize("html", [False, True])
def test_the_shapes_programs_send_are_read_quickly_and_alike(attachments: int, html: bool) -> None:
    assert agrees(stored(batch_message(7, attachments, html)))


def test_text_attachments_keep_their_bytes_and_charsets_decode_alike() -> None:
    message = EmailMessage()
    message["Subject"] = "text"
    message.set_content("caf\u00e9 cr\u00e8me\n", charset="iso-8859-1", cte="quoted-printable")
    message.add_attachment("line one\nline two\n\n", filename="notes.txt")
    message.add_attachment(b"\x00\x01binary", maintype="image", subtype="png", filename="p.png")
    assert agrees(stored(message))
    assert agrees(MULTIPART.replace(b"=?utf-8?q?caf=C3=A9?=", b"plain"))


def test_hostile_messages_are_read_alike_or_left_to_the_email_package() -> None:
    read_quickly = 0
    for name, message in hostile_messages().items():
        try:
            read_quickly += agrees(message.replace(b"\r\n", b"\n"))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    assert read_quickly < len(hostile_messages()), "the hostile shapes are left to the email package"


@pytest.mark.parametrize(
    "shape",
    [
        b'Content-Type: text/plain; name="note.txt"\n\nhello body\n',  # an attachment, and the body too
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Disposition: inline; filename=a.txt\n\nfirst\n"
        b"--b\nContent-Type: text/plain\n\nsecond\n--b--\n",
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/mixed; boundary=c\n"
        b"Content-Disposition: attachment\n\n--c\n\nhidden\n--c--\n--b\n\nvisible\n--b--\n",
    ],
)
def test_the_text_body_is_the_one_the_email_package_finds(shape: bytes) -> None:
    assert agrees(shape)


@pytest.mark.parametrize(
    "shape",
    [
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n",  # no closing boundary
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\nx\n--b--\n",  # an empty part
        b"Content-Type: multipart/mixed; boundary*=utf-8''b\n\n--b\n\nx\n--b--\n",  # RFC 2231
        b"Content-Type: message/rfc822\n\nSubject: inner\n\nx\n",
        b"Content-Type: text/plain\r\n\r\nx\r\n",
        b"Subject: no empty line\nnot a header\n",
        b"Content-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n",
        b"Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n--b\n"
        b"Content-Disposition: attachment; filename=a\nContent-Transfer-Encoding: base64\n\nnot base64!\n--b--\n",
    ],
)
def test_uncertain_shapes_are_left_to_the_email_package(shape: bytes) -> None:
    assert quickmime.contents(shape) is None


edits = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=4000),
        st.sampled_from([b"", b"\n", b"-", b"--", b" ", b";", b'"', b"=", b"\t", b"x", b"\n\n", b"\x80"]),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attachments=st.integers(min_value=0, max_value=2), html=st.booleans(), changes=edits)
def test_any_mutation_is_read_alike_or_left_to_the_email_package(
    attachments: int, html: bool, changes: list[tuple[int, bytes, int]]
) -> None:
    message = bytearray(stored(batch_message(3, attachments, html)))
    for at, insert, delete in changes:
        at %= len(message)
        message[at : at + delete] = insert
    agrees(bytes(message))


@pytest.mark.parametrize("attachments", [0, 2])
def test_a_catalogue_entry_is_the_same_read_quickly_or_by_the_email_package(
    attachments: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = batch_message(5, attachments, html=True)
    message["Cc"] = "=?utf-8?q?Z=C3=B6e?= <zoe@three.test>"
    record = as_record(stored(message))
    assert quickmime.contents(record.delivery.message) is not None
    quick = catalogue_entry("one.test", record, 1)
    monkeypatch.setattr(quickmime, "contents", lambda message: None)
    assert catalogue_entry("one.test", record, 1) == quick
