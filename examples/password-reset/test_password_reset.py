"""The reset mail, tested with maillab's `inbox` fixture: `pip install ./clients/python`, `make up`, `pytest`."""

from __future__ import annotations

from password_reset import send_reset

from maillab_client.plugin import Inbox


def test_the_reset_mail_brings_the_link_and_the_code(inbox: Inbox) -> None:
    link, code = send_reset(inbox.address("alice"), smtp=inbox.smtp)
    [mail] = inbox.wait_for(subject="Reset your password", to="alice")
    assert mail.links() == [link]  # in the text and the HTML, listed once
    assert mail.code() == code


def test_nobody_else_gets_one(inbox: Inbox) -> None:
    send_reset(inbox.address("alice"), smtp=inbox.smtp)
    inbox.wait_for(to="alice")
    inbox.assert_no_message(within=1, query=f"-to:{inbox.address('alice')}")
