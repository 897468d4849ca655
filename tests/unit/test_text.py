"""maillab_common.text.visible: controls shown as escapes, everything else as it was."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maillab_common.text import visible

ESCAPED = {
    "\x00": r"\x00",
    "\x07": r"\x07",
    "\t": r"\x09",
    "\n": r"\x0a",
    "\r": r"\x0d",
    "\x1b": r"\x1b",
    "\x1f": r"\x1f",
    "\x7f": r"\x7f",
    "\x80": r"\x80",
    "\x85": r"\x85",  # NEL
    "\x9b": r"\x9b",  # CSI
    "\x9d": r"\x9d",  # OSC
    "\x9f": r"\x9f",
    "\u061c": r"\u061c",
    "\u200e": r"\u200e",
    "\u200f": r"\u200f",
    "\u2028": r"\u2028",
    "\u2029": r"\u2029",
    "\u202a": r"\u202a",
    "\u202e": r"\u202e",  # right-to-left override
    "\u2066": r"\u2066",
    "\u2069": r"\u2069",
    "\udc9b": r"\udc9b",  # an undecodable byte, after surrogateescape
}
KEPT = ["", "plain ASCII ~!@#$%^&*()[]{}", "back\\slash \\x1b", "bücher é", "日本語", "🙂", "\xa0\xad", "[/]"]


@pytest.mark.parametrize(("control", "escape"), ESCAPED.items())
def test_each_control_is_shown_as_an_escape(control: str, escape: str) -> None:
    assert visible(f"a{control}b") == f"a{escape}b"


@pytest.mark.parametrize("text", KEPT)
def test_text_without_controls_is_kept_as_it_is(text: str) -> None:
    assert visible(text) is text


def test_a_terminal_sequence_is_shown_whole() -> None:
    assert visible("\x1b]8;;http://evil.test/\x1b\\link\x1b]8;;\x1b\\") == (
        "\\x1b]8;;http://evil.test/\\x1b\\link\\x1b]8;;\\x1b\\"
    )


@given(st.text(alphabet=st.characters(codec=None)))
def test_nothing_unsafe_is_left(text: str) -> None:
    shown = visible(text)
    assert not any(
        unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
        for c in shown
    )
    assert visible(shown) == shown


def test_the_cost_is_one_pass() -> None:
    text = "\x1b\u2028x" * 300_000  # a quadratic escape would not finish
    assert len(visible(text)) == 300_000 * (4 + 6 + 1)
