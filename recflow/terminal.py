"""The terminal's log handler: Prefect's console handler, showing what ``recflow.logs`` lets
through. Its own module because it imports Prefect, which ``recflow.logs`` must not (the CLI
imports that before every command, ``--help`` included)."""

from __future__ import annotations

import logging

from prefect.logging.handlers import PrefectConsoleHandler

from recflow.logs import shown_in_terminal


class TerminalHandler(PrefectConsoleHandler):
    """Prefect builds it in place of its own (``PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return shown_in_terminal(record) and bool(super().filter(record))
