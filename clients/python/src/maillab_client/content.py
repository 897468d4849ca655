"""What a test reads out of a message's bodies, and how message text is shown safely.

Pure functions, no I/O: the links in a text and an HTML body, an HTML body as text (for a
code that sits only in the HTML), and `printable`, which every error message uses for
anything a message says. A message's content is hostile: a subject may carry an ANSI
escape, a carriage return or a bidirectional control, and a failing test prints it to a
terminal or a CI log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html.parser import HTMLParser

# A URL in plain text runs to the first space, angle bracket or quote; trailing sentence
# punctuation is not part of it ("see https://x.test/a.").
TEXT_URL = re.compile(r"""https?://[^\s<>"'`]+""", re.IGNORECASE)
TRAILING = ".,;:!?*_"
CLOSING = {")": "(", "]": "[", "}": "{"}
# The elements whose href a reader follows, and the hrefs that are links: absolute http(s) URLs.
LINK_ELEMENTS = frozenset({"a", "area"})
HTTP_URL = re.compile(r"https?://[^/?#\s]", re.IGNORECASE)
# Elements whose content is not text a reader sees.
HIDDEN = frozenset({"script", "style", "head", "title", "template"})
# Elements that break a line: their text must not run into the next word, or a code ends
# up glued to a neighbour ("code:123456Thanks") and a \b pattern misses it.
BLOCKS = frozenset(
    {"br", "p", "div", "tr", "td", "th", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr"}
    | {"blockquote", "pre", "section", "article", "header", "footer", "dd", "dt", "center"}
)
SHOWN_CHARACTERS = 200  # of a subject or an address in an error message; the rest is cut


def text_links(text: str) -> list[str]:
    """The http(s) URLs in plain text, in order (repeats included)."""
    return [_trimmed(found.group()) for found in TEXT_URL.finditer(text)]


def _trimmed(url: str) -> str:
    """`url` without the punctuation of the sentence around it: a trailing full stop, or a
    closing bracket that has no opening one in the URL ("(see https://x.test/a)")."""
    while url:
        last = url[-1]
        if last in TRAILING or (last in CLOSING and url.count(CLOSING[last]) < url.count(last)):
            url = url[:-1]
        else:
            break
    return url


class _Reader(HTMLParser):
    """Collects, in document order, the http(s) hrefs of <a> and <area> and the visible text of an HTML body."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.parts: list[str] = []
        self.hidden = 0  # how deep inside a script, style, ... element the parser is

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._link(tag, attrs)
        if tag in HIDDEN:
            self.hidden += 1
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <a href=... />: never opens a hidden element.
        self._link(tag, attrs)
        if tag in BLOCKS:
            self.parts.append("\n")

    def _link(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """The href of a link a reader can follow: an <a> or <area> to an http(s) URL. A
        stylesheet (<link>), a <base>, mailto:, a #fragment or a relative href is none."""
        if tag not in LINK_ELEMENTS:
            return
        for name, value in attrs:
            if name == "href" and value and HTTP_URL.match(value.strip()):
                self.hrefs.append(value.strip())
                return

    def handle_endtag(self, tag: str) -> None:
        if tag in HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def _read(html: str) -> _Reader:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader


def html_links(html: str) -> list[str]:
    """The http(s) hrefs of the <a> and <area> elements of an HTML body, entities decoded, in
    document order (repeats included)."""
    return _read(html).hrefs if html else []


def html_text(html: str) -> str:
    """The text a reader of an HTML body sees: no tags, no scripts or styles, entities decoded,
    a line break where a block ends."""
    return "".join(_read(html).parts) if html else ""


def links(text: str, html: str) -> list[str]:
    """The links of a message: the http(s) URLs in its text body, then the http(s) hrefs of the
    <a> and <area> elements of its HTML body, each once, in the order first seen."""
    return unique([*text_links(text), *html_links(html)])


def first_match(pattern: str | re.Pattern[str], texts: Iterable[str]) -> str | None:
    """The first match of `pattern` in the first of `texts` that has one (its group 1 when the
    pattern has groups, so that `r"code: (\\d+)"` gives the digits); None when none has."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    for text in texts:
        found = compiled.search(text)
        if found is not None:
            return found.group(1) if compiled.groups else found.group()
    return None


def unique(items: Iterable[str]) -> list[str]:
    """`items` without repeats, in the order first seen."""
    return list(dict.fromkeys(items))


def printable(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """`text` safe for a terminal: every character that is not printable (controls, escapes,
    line breaks, bidirectional and other format characters) written as a Python escape, and
    cut after `limit` characters."""
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(char if char.isprintable() else _escape(char) for char in text)
    return text + "..." if cut else text


SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in SHORT_ESCAPES:
        return SHORT_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
