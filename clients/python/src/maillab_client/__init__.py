"""maillab's Python client: wait for mail in a running lab and assert on it.

    from maillab_client import Lab

    with Lab() as lab:                      # the lab `make up` starts; or Lab.from_env()
        [mail] = lab.wait_for('to:alice@one.test subject:"password reset"', timeout=10)
        assert mail.code() is not None

The package owns the client (lab.py: the API as calls; message.py: a message as a test
reads it; content.py: links, codes and safe text; errors.py: the exceptions). The pytest
plugin (plugin.py) is built on it.
"""

from maillab_client.errors import ApiError, LabUnavailable, MailLabError, MessageTimeout, UnexpectedMessage
from maillab_client.lab import Lab
from maillab_client.message import Attachment, Message

__all__ = [
    "ApiError",
    "Attachment",
    "Lab",
    "LabUnavailable",
    "MailLabError",
    "Message",
    "MessageTimeout",
    "UnexpectedMessage",
]
