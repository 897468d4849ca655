"""DataScanner: the end of DATA, limits and dot-unstuffing, however the bytes are cut into chunks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maillab_server.data import DataScanner, Finished, Problem


def scan(
    data: bytes, *, cuts: tuple[int, ...] = (), lenient: bool = False, size: int = 10_000, line: int = 1000
) -> Finished | None:
    """Feed `data` cut at `cuts`; a result's rest includes what was never fed (the reader keeps it)."""
    scanner = DataScanner(max_size=size, max_line_length=line, lenient=lenient)
    for start, end in zip((0, *cuts), (*cuts, len(data)), strict=True):
        result = scanner.feed(data[start:end])
        if result is not None:
            return Finished(message=result.message, problem=result.problem, rest=result.rest + data[end:])
    return None


CASES = {
    "plain": (b"Subject: a\r\n\r\nbody\r\n.\r\n", b"Subject: a\r\n\r\nbody\r\n", b""),
    "empty message": (b".\r\n", b"", b""),
    "pipelined command after the end": (b"x\r\n.\r\nMAIL FROM:<a@b.c>\r\n", b"x\r\n", b"MAIL FROM:<a@b.c>\r\n"),
    "dot-stuffed lines": (b"..one\r\n...two\r\n.\r\n", b".one\r\n..two\r\n", b""),
    "dot-stuffed first line": (b"..\r\n.\r\n", b".\r\n", b""),
    "smuggling: LF dot LF is content": (
        b"a\n.\nMAIL FROM:<x@y.z>\r\nb\r\n.\r\n",
        b"a\n.\nMAIL FROM:<x@y.z>\r\nb\r\n",
        b"",
    ),
    "smuggling: LF dot CRLF is content": (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", b""),
    # a line that begins with a dot loses it (RFC 5321 4.5.2), even when a bare LF follows
    "smuggling: CRLF dot LF is content": (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n", b""),
}


@pytest.mark.parametrize(("data", "message", "rest"), CASES.values(), ids=CASES.keys())
def test_strict_mode(data: bytes, message: bytes, rest: bytes) -> None:
    assert scan(data) == Finished(message=bytearray(message), problem=None, rest=rest)


@pytest.mark.parametrize("data", [b"", b"no end\r\n", b"almost\r\n.", b"a\n.\n"])
def test_no_end_yet_asks_for_more(data: bytes) -> None:
    assert scan(data) is None


@given(st.lists(st.integers(0, len(CASES["pipelined command after the end"][0])), max_size=6, unique=True))
def test_any_chunking_gives_the_same_result(cuts: list[int]) -> None:
    data, message, rest = CASES["pipelined command after the end"]
    data = b"..x\r\n" + data
    assert scan(data, cuts=tuple(sorted(cuts))) == Finished(
        message=bytearray(b".x\r\n" + message), problem=None, rest=rest
    )


LENIENT = {
    "LF dot LF ends": (b"hello\nworld\n.\n", b"hello\nworld\n"),
    "LF dot CRLF ends": (b"hello\n.\r\n", b"hello\n"),
    "CRLF dot CRLF still ends": (b"hello\r\n.\r\n", b"hello\r\n"),
    "LF dot-stuffing undone": (b"..x\n.\n", b".x\n"),
}


@pytest.mark.parametrize(("data", "message"), LENIENT.values(), ids=LENIENT.keys())
def test_lenient_mode(data: bytes, message: bytes) -> None:
    assert scan(data, lenient=True) == Finished(message=bytearray(message), problem=None, rest=b"")


def test_over_the_size_limit_is_read_to_the_end_and_refused() -> None:
    data = b"x" * 98 + b"\r\n"
    result = scan(data * 200 + b".\r\nQUIT\r\n", cuts=tuple(range(1000, 20000, 1000)), size=5000)
    assert result == Finished(message=None, problem=Problem.TOO_BIG, rest=b"QUIT\r\n")


@pytest.mark.parametrize(("length", "refused"), [(998, False), (999, True), (1500, True)])
def test_a_line_over_the_limit_is_refused(length: int, refused: bool) -> None:
    # max_line_length 1000 counts the CRLF: 998 bytes of text is the longest line allowed.
    data = b"short\r\n" + b"y" * length + b"\r\nshort\r\n.\r\n"
    result = scan(data, cuts=(300, 700, 900))
    assert result is not None
    assert (result.problem is Problem.LINE_TOO_LONG) == refused


@pytest.mark.parametrize(("size", "refused"), [(1024, False), (1025, True)])
def test_the_size_limit_counts_the_message_exactly(size: int, refused: bool) -> None:
    message = b"x" * (size - 2) + b"\r\n"
    result = scan(message + b".\r\n", size=1024)
    assert result is not None and (result.problem is Problem.TOO_BIG) == refused
