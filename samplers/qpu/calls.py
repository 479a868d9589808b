"""QPU calls and their retries.

Transient cloud errors (timeouts, 5xx, dropped connections) are retried with exponential backoff;
anything else from the cloud stack is a permanent `QPUError`, and other exceptions are bugs that
propagate unchanged. Whatever is raised carries no API token.
"""

from __future__ import annotations

import time

from samplers.qpu.client import from_cloud, redact, transient
from samplers.qpu.errors import QPUConfigError, QPUError


class Retry:
    """The retry policy: at most `max_retries` retries, waiting backoff_s · 2^k before the k-th."""

    def __init__(self, max_retries: int, backoff_s: float):
        self.max_retries = max_retries
        self.backoff_s = backoff_s

    def after_failure(self, exc: Exception, retries: int) -> int:
        """Wait and return the new retry count if `exc` is worth retrying; raise otherwise."""
        if isinstance(exc, (QPUConfigError, QPUError)):
            raise exc
        text = str(exc)
        cleaned = redact(text)
        if transient(exc) and retries < self.max_retries:
            time.sleep(self.backoff_s * 2**retries)
            return retries + 1
        if transient(exc):
            raise QPUError(
                f"sampler 'qpu': {type(exc).__name__} persisted after {retries} retries: {cleaned}"
            ) from None
        if from_cloud(exc) or cleaned != text:
            raise QPUError(f"sampler 'qpu': {type(exc).__name__}: {cleaned}") from None
        raise exc

    def run(self, call, retries: int = 0):
        """(call(), retries used in all) with `retries` already spent on this call."""
        while True:
            try:
                return call(), retries
            except Exception as exc:
                retries = self.after_failure(exc, retries)
