"""The watch's saved positions: how far each forward file has been printed.

Kept outside /forward (the inspector only reads that volume), written whole or not at all
(a temporary file, then a rename), so that a restart neither misses a message nor prints
one twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

Positions = dict[str, tuple[int, int]]  # file name -> (inode, offset)


def load_positions(path: Path) -> Positions | None:
    """The saved positions, or None when there are none (first start, or unreadable)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return {str(name): (int(entry["inode"]), int(entry["offset"])) for name, entry in document["files"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the state file %s, which cannot be read: %s", path, exc)
        return None


def save_positions(path: Path, positions: Positions) -> None:
    document = {"files": {name: {"inode": inode, "offset": offset} for name, (inode, offset) in positions.items()}}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)
