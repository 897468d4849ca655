"""Presentation: a summary as a panel or JSON, a headline as a line; `show`'s text; `verify`'s report.

Everything here reads the model (model.py) and writes nothing. What reaches a terminal goes
through `visible` (controls shown as `\\x1b`, never obeyed) and rich `Text` (markup and
emoji codes shown as they are, never parsed); text from a message is never given to rich as
a plain string. JSON escapes the same characters.
"""

from __future__ import annotations

import json
import re
from typing import Protocol

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from maillab_common.forward import Record
from maillab_common.text import visible
from maillab_inspector.model import Contents, MessageSummary, headers_shown, parse_headers
from maillab_inspector.verify import VerifyReport

# Where a line is shown to a person (a panel, `list`), longer text is cut here: a 4 MB
# Subject is a fact about the message, not something to scroll past. JSON keeps it whole.
SHOWN_CHARACTERS = 300
VERIFY_COLUMNS = ("expected", "delivered", "missing", "corrupted", "duplicated", "unsent", "damaged")

# JSON escapes C0 controls itself; these it would write raw: DEL, C1, the line separators,
# the bidi controls and lone surrogates. Outside strings a JSON text is plain ASCII.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def json_line(document: object) -> str:
    """One line of JSON with every control character escaped: what json.dumps leaves raw too."""
    return _JSON_UNSAFE.sub(lambda match: f"\\u{ord(match[0]):04x}", json.dumps(document, ensure_ascii=False))


def as_json(summary: MessageSummary) -> str:
    """One line of JSON: the summary's text exactly, with every control character escaped."""
    return json_line(
        {
            "domain": summary.domain,
            "offset": summary.offset,
            "received": summary.received,
            "mail_from": summary.mail_from,
            "rcpt_to": list(summary.rcpt_to),
            "subject": summary.subject,
            "message_id": summary.message_id,
            "size": summary.size,
            "attachments": [
                {"filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256}
                for a in summary.attachments
            ],
            "problem": summary.problem,
        }
    )


def as_panel(summary: MessageSummary) -> Panel:
    """A panel for a person: every text from the message cut, with its controls made visible."""
    fields = Table.grid(padding=(0, 1))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("from", Text(f"<{shown(summary.mail_from)}>"))
    fields.add_row("to", Text(shown(", ".join(f"<{rcpt}>" for rcpt in summary.rcpt_to))))
    fields.add_row("subject", Text(shown(summary.subject)))
    fields.add_row("message-id", Text(shown(summary.message_id)))
    fields.add_row("size", Text(f"{summary.size} bytes"))
    for a in summary.attachments:
        described = f"{shown(a.filename)} ({shown(a.content_type)}, {a.size} bytes, sha256 {a.sha256[:12]})"
        fields.add_row("attachment", Text(described))
    if summary.problem:
        fields.add_row("problem", Text(shown(summary.problem), style="yellow"))
    parts: list[Table | Text] = [fields]
    if summary.preview:
        parts.append(Text("\n".join(shown(line.expandtabs()) for line in summary.preview), style="dim"))
    return Panel(
        Group(*parts),
        title=Text(f"{summary.received} {visible(summary.domain)}"),
        title_align="left",
        subtitle=Text(f"offset {summary.offset}"),
        subtitle_align="right",
    )


class OneLine(Protocol):
    """What one line shows: a headline, a summary, or a message in the catalogue."""

    @property
    def received(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def mail_from(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def subject(self) -> str: ...
    @property
    def problem(self) -> str: ...


def as_line(line: OneLine) -> str:
    """One line per message (`inspector list`, `watch` when it falls behind), from the headers
    alone (a summary is a headline too): its controls made visible, so one line it stays."""
    return (
        f"{line.received}  {visible(line.domain)}  {shown(line.message_id)}  <{shown(line.mail_from)}>  "
        f"{line.size}B  {shown(line.subject)}" + (f"  [{shown(line.problem)}]" if line.problem else "")
    )


def shown(text: str) -> str:
    """`text` for a person: cut to SHOWN_CHARACTERS (saying how much was left out), controls made visible."""
    if len(text) > SHOWN_CHARACTERS:
        text = f"{text[:SHOWN_CHARACTERS]}… ({len(text) - SHOWN_CHARACTERS} more characters)"
    return visible(text)


def message_head(name: str, record: Record) -> list[Text]:
    """`show`'s envelope line and every header of the message, decoded where it can be."""
    delivery = record.delivery
    recipients = ", ".join(f"<{rcpt}>" for rcpt in delivery.rcpt_tos)
    envelope = f" @{record.offset}: from <{visible(delivery.mail_from)}> to {visible(recipients)}"
    lines = [Text.assemble((visible(name), "bold"), envelope)]
    lines += [Text(f"{visible(header)}: {visible(value)}") for header, value in headers_shown(parse_headers(record))]
    return lines


_LINE_END = re.compile(r"\r\n|\r|\n")


def message_body(contents: Contents) -> list[Text]:
    """`show`'s text body, then one line for each attachment."""
    # Line by line, so that line ends stay line ends and every other control (NEL and
    # U+2028 included, which splitlines() would take for line ends) is shown.
    lines = _LINE_END.split(contents.text.removesuffix("\n"))
    shown_lines = [Text("\n".join(visible(line.expandtabs()) for line in lines))]
    for filename, content_type, data in contents.attachments:
        shown_lines.append(Text(f"attachment: {visible(filename)} ({visible(content_type)}, {len(data)} bytes)"))
    return shown_lines


def verify_counts(report: VerifyReport, damaged: int) -> tuple[int, ...]:
    """The numbers of `verify`'s report, in the order of VERIFY_COLUMNS."""
    problems = (len(report.missing), len(report.corrupted), len(report.duplicated))
    return (report.expected, report.delivered, *problems, report.not_accepted, damaged)


def verify_table(manifest_name: str, counts: tuple[int, ...]) -> Table:
    table = Table(title=Text(f"verify {visible(manifest_name)}"))
    for column in VERIFY_COLUMNS:
        table.add_column(column, justify="right")
    table.add_row(*(str(count) for count in counts))
    return table


def verify_line(counts: tuple[int, ...]) -> str:
    """The report's numbers on one line, for scripts: `verify: expected 3, delivered 3, ...`."""
    return "verify: " + ", ".join(f"{name} {count}" for name, count in zip(VERIFY_COLUMNS, counts, strict=True))


def verify_json(manifest_name: str, report: VerifyReport, counts: tuple[int, ...]) -> str:
    """`verify --json`: the counts and every finding, as one JSON object on one line."""
    document: dict[str, object] = {"manifest": manifest_name, "ok": report.ok}
    document.update(zip(VERIFY_COLUMNS, counts, strict=True))
    document["findings"] = (
        [{"problem": "missing", "message_id": message_id, "domain": domain} for message_id, domain in report.missing]
        + [
            {"problem": "corrupted", "message_id": message_id, "domain": domain, "detail": detail}
            for (message_id, domain), detail in report.corrupted
        ]
        + [
            {"problem": "duplicated", "message_id": message_id, "domain": domain, "copies": copies}
            for (message_id, domain), copies in report.duplicated
        ]
    )
    return json_line(document)


def verify_findings(report: VerifyReport) -> list[Text]:
    """One line for each delivery missing, corrupted or duplicated."""
    lines = [Text(f"missing: {shown(message_id)} in {visible(domain)}") for message_id, domain in report.missing]
    lines += [
        Text(f"corrupted: {shown(message_id)} in {visible(domain)}: {shown(problem)}")
        for (message_id, domain), problem in report.corrupted
    ]
    lines += [
        Text(f"duplicated: {shown(message_id)} in {visible(domain)}: {copies} copies")
        for (message_id, domain), copies in report.duplicated
    ]
    return lines


RATE_LINE_DOMAINS = 5  # the busiest domains a rate line names; the rest are counted


def rate_line(counts: dict[str, int], seconds: float) -> str:
    """`watch`'s line for a second of messages counted, not shown: how many, and where, busiest first."""
    total = sum(counts.values())
    busiest = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    named = ", ".join(f"{visible(domain)} {count:,}" for domain, count in busiest[:RATE_LINE_DOMAINS])
    rest = len(busiest) - RATE_LINE_DOMAINS
    period = "the last second" if seconds < 1.5 else f"the last {seconds:.0f} seconds"
    noun = "message" if total == 1 else "messages"
    return f"{total:,} {noun} in {period}: {named}" + (f" and {rest:,} more domains" if rest > 0 else "")


def fewer_details_notice(shown_as: str, waited: float) -> str:
    """What `watch` says when it shows less of each message, to keep up."""
    behind = f"falling behind (a message waited {waited:.1f} s to be shown)"
    return f"-- watch: {behind}: {shown_as} until deliveries slow down --"


def more_details_notice(shown_as: str, rate: float) -> str:
    """What `watch` says when deliveries have slowed down enough to show more again."""
    return f"-- watch: caught up ({rate:,.0f} messages in the last second): {shown_as} again --"
