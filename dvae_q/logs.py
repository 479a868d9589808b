"""Log records of dvae-q's packages, and Python warnings, shown through a `progress.Reporter`:
above a progress bar on a terminal, as plain lines elsewhere, only warnings when quiet."""

from __future__ import annotations

import logging

from dvae_q.progress import Reporter

LOGGERS = ("dvae_q", "samplers", "topologies", "py.warnings")


class _ReporterHandler(logging.Handler):
    def __init__(self, reporter: Reporter, level: int):
        super().__init__(level)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().rstrip()
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            self.reporter.write(text)
        except Exception:  # logging must never stop a run
            self.handleError(record)


def configure_logging(reporter: Reporter, level: int | None = None) -> logging.Handler:
    """Send the records of dvae_q, samplers, topologies and Python warnings through `reporter`.

    ``level`` defaults to INFO, or WARNING when the reporter is quiet. Calling it again
    replaces the previous handler. Returns the handler (remove it to undo).
    """
    if level is None:
        level = logging.WARNING if reporter.quiet else logging.INFO
    handler = _ReporterHandler(reporter, level)
    logging.captureWarnings(True)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _ReporterHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
    return handler
