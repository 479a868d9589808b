"""QPU calls: submitted together, resolved in order, retried on transient errors.

Transient cloud errors (timeouts, 5xx, dropped connections) are retried with exponential backoff;
anything else from the cloud stack is a permanent `QPUError`, and other exceptions are bugs that
propagate unchanged. Whatever is raised carries no API token.
"""

from __future__ import annotations

import time
from collections import deque

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


class Call:
    """One QPU call: submitted at once, resolved when its answer is needed.

    Ocean samplers answer with SampleSets that resolve lazily (a cloud future underneath), so a
    call is cheap to submit and the wait happens in `wait`. A cloud error can surface at either
    point; both are retried under the same policy, and an error is kept on the call so that it
    is raised to the draw that owns the call, whoever happens to wait on it first.
    """

    def __init__(self, sampler, bqm, parameters: dict, retry: Retry):
        self.sampler, self.bqm, self.parameters = sampler, bqm, parameters
        self._retry = retry
        self.answer = None
        self.retries = 0
        self.error: Exception | None = None
        self.resolved = False

    def _send(self):
        return self.sampler.sample(self.bqm, **self.parameters)

    def _send_resolved(self):
        answer = self._send()
        answer.resolve()
        return answer

    def submit(self) -> None:
        self.answer, self.retries = self._retry.run(self._send, self.retries)

    def wait(self):
        """The resolved answer (retrying transient failures), or the call's error raised."""
        if not (self.resolved or self.error):
            try:
                try:
                    self.answer.resolve()
                except Exception as exc:
                    self.retries = self._retry.after_failure(exc, self.retries)
                    self.answer, self.retries = self._retry.run(self._send_resolved, self.retries)
            except Exception as exc:
                self.error = exc
            else:
                self.resolved = True
        if self.error is not None:
            raise self.error
        return self.answer


class Flight:
    """Calls submitted and not yet resolved, oldest first, at most `limit` at a time: submitting
    one more first waits for the oldest."""

    def __init__(self, limit: int):
        self.limit = limit
        self._calls: deque[Call] = deque()

    def __len__(self) -> int:
        return len(self._calls)

    def submit(self, call: Call) -> None:
        while len(self._calls) >= self.limit:
            oldest = self._calls[0]
            try:
                self.wait(oldest)
            except Exception:  # kept on the call, for the draw that owns it
                pass
        call.submit()
        self._calls.append(call)

    def wait(self, call: Call):
        try:
            return call.wait()
        finally:
            self.drop([call])

    def drop(self, calls) -> None:
        """Forget `calls` (answered, or belonging to a draw that failed)."""
        for call in calls:
            if call in self._calls:
                self._calls.remove(call)
