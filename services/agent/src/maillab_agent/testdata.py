"""The contents of generated test files: text, CSV, PNG, PDF and raw bytes, from a seeded RNG.

Each kind makes a well-formed file of about the size asked for, so that a batch carries
attachments a mail reader can open and the inspector can check by digest. The same RNG
state gives the same bytes. What a message is made of is message.py's; this module knows
only files.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

_WORDS = ("mail", "lab", "smtp", "domain", "forward", "inspector", "agent", "server", "batch", "test")


@dataclass(frozen=True)
class FileKind:
    content_type: str
    extension: str
    make: Callable[[random.Random, int], bytes]  # (rng, about this many bytes) -> the file


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def _text(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = words(rng, 10) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def _csv(rng: random.Random, size: int) -> bytes:
    rows = ["id,value,label\n"]
    total = len(rows[0])
    while total < size:
        row = f"{len(rows)},{rng.random():.6f},{rng.choice(_WORDS)}\n"
        rows.append(row)
        total += len(row)
    return "".join(rows).encode()


def _png(rng: random.Random, size: int) -> bytes:
    """A valid grey-scale PNG of about `size` bytes (stored uncompressed)."""
    width = 64
    height = max(1, size // (width + 1))
    raw = b"".join(b"\x00" + rng.randbytes(width) for _ in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


def _pdf(rng: random.Random, size: int) -> bytes:
    """A small valid one-page PDF whose content stream is padded to about `size` bytes."""
    text = words(rng, 8)
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET\n".encode()
    stream += b"%" + rng.randbytes(max(0, size - len(stream))).hex().encode()[: max(0, size - len(stream) - 2)] + b"\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _binary(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


ATTACHMENT_KINDS = (
    FileKind(content_type="text/plain", extension="txt", make=_text),
    FileKind(content_type="text/csv", extension="csv", make=_csv),
    FileKind(content_type="image/png", extension="png", make=_png),
    FileKind(content_type="application/pdf", extension="pdf", make=_pdf),
    FileKind(content_type="application/octet-stream", extension="bin", make=_binary),
)
