"""The inspector's log lines, in each of its processes: one line each, control characters shown as escapes."""

from __future__ import annotations

import logging

from maillab_common.text import visible


class VisibleFormatter(logging.Formatter):
    """Log lines with their control characters shown as escapes: one line each, never obeyed."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))


def log_visibly() -> None:
    """Log INFO and up to stderr, through VisibleFormatter."""
    handler = logging.StreamHandler()
    handler.setFormatter(VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
