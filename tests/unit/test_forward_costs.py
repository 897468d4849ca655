"""What a message controls in the forward format costs time linear in its size.

Speed belongs in a benchmark (bench/isolation.py); these tests pin down the property that
keeps the cost linear, and that the result stays what it was.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from maillab_common import forward
from maillab_common.forward import to_mbox_line_endings


def test_a_run_of_crs_is_matched_from_its_first_cr_only() -> None:
    """A search that can start at any CR of a run goes over the rest of the run from each one:
    about 1 s for one thousand 990-CR lines, and hours for one long run (CRs need no LF)."""
    assert forward._CRS_BEFORE_LF.search(b"\r\r\r\n") is not None
    assert forward._CRS_BEFORE_LF.search(b"\r\r\r\n", 1) is None


def defined_line_endings(message: bytes) -> bytes:
    """LF line endings: every CR right before a LF goes, and a final LF is added when missing."""
    if not message.endswith(b"\n"):
        message += b"\n"
    return b"\n".join(line.rstrip(b"\r") for line in message.split(b"\n"))


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"\r\r\n", b"From "]), max_size=40).map(b"".join))
def test_line_endings_are_what_the_definition_says(message: bytes) -> None:
    assert to_mbox_line_endings(message) == defined_line_endings(message)
