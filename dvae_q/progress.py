"""Progress of long operations: a bar on a terminal, occasional plain lines in a log, nothing
when quiet. Library code reports; only the command line decides how it is shown.

Library side
------------
A function that runs long takes ``progress=None`` and reports through any object with the three
methods of `Progress` (duck-typed, so `samplers` and `topologies`, which do not import dvae_q,
make the same calls after checking ``progress is not None``)::

    progress = as_progress(progress)   # None -> NULL, which does nothing
    progress.set_total(n)              # once, before the first update, in the function's unit
    progress.update(n=1)               # n more units done
    progress.set_postfix(**values)     # a few live values, e.g. log_z=..., ess=...

The function names its unit in its docstring (AIS: temperatures; IW evaluation: samples, i.e.
points × K; data fetch: bytes; calibration: iterations) and calls `set_total` itself, so a
caller only names the task. `update` must stay cheap: it is called once per unit or chunk.

Command-line side
-----------------
::

    reporter = Reporter(quiet=args.quiet)      # writes to stderr
    logs.configure_logging(reporter)           # log records and warnings go through it too
    with reporter.task("train", total=cfg.steps, initial=start, unit="steps") as bar:
        for step in ...:
            bar.update(); bar.set_postfix(recon=...)
            with reporter.task("AIS log Z", unit="temperatures") as p:   # nested
                logz.ais_log_z(..., progress=p)

How it is shown:

* stderr is a terminal: the outermost task is a tqdm bar. A task opened while a bar is open
  is shown inside that bar's postfix (``AIS log Z 120/299``) and removed when it ends, so there
  is a single line and nothing to garble. Log lines are written above the bar (`tqdm.write`).
* stderr is not a terminal (a log file, CI, a cluster job): plain lines, never a carriage
  return. A task writes a line once `interval_s` has passed since its last line; an outermost
  one also when it passes another tenth of its total, if `min_gap_s` has passed since its
  last line (a task of a few seconds writes only its final line). Nested tasks are indented.
  Every task ends with one line: count, time, rate, postfix.
* quiet: no progress at all; log records of level WARNING and above are still written.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    """What library functions report through (see the module docstring)."""

    def set_total(self, total: int | None) -> None: ...

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **values) -> None: ...


class _Null:
    """A Progress that reports nothing: what ``progress=None`` means."""

    def set_total(self, total):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, **values):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


NULL = _Null()


def as_progress(progress: Progress | None) -> Progress:
    return NULL if progress is None else progress


# --- formatting ---------------------------------------------------------------------------


def format_postfix(values: dict) -> str:
    """``key=value`` pairs; floats with 4 significant digits, None values left out."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={cell(v)}" for k, v in values.items() if v is not None)


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_amount(n: float, unit: str) -> str:
    """``1,500 steps``; byte counts (unit 'B') in kB/MB/GB."""
    if unit == "B":
        for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if n >= scale:
                return f"{n / scale:.1f} {name}"
        return f"{int(n)} B"
    return f"{int(n):,} {unit}"


# --- tasks ----------------------------------------------------------------------------------


class _Task:
    """State shared by every kind of task; the reporter keeps the open ones on a stack."""

    def __init__(self, reporter, description, total, unit, initial):
        self.reporter, self.description, self.unit = reporter, description, unit
        self.total, self.n, self.initial = total, initial, initial
        self.postfix = ""
        self.started = reporter.clock()

    def set_total(self, total):
        self.total = total

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **values):
        self.postfix = format_postfix(values)

    def close(self, failed: bool = False):
        self.reporter._closed(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(failed=exc_type is not None)
        return None

    def rate(self, now: float) -> str:
        elapsed = now - self.started
        if elapsed <= 0 or self.n <= self.initial:
            return ""
        per_s = (self.n - self.initial) / elapsed
        if self.unit == "B":
            return f"{format_amount(per_s, self.unit)}/s"
        return f"{per_s:,.0f} {self.unit}/s" if per_s >= 100 else f"{per_s:.3g} {self.unit}/s"


class _LineTask(_Task):
    """Plain lines for logs: tenths of the total (outermost task only), timed lines, a final line."""

    def __init__(self, reporter, description, total, unit, initial, depth):
        super().__init__(reporter, description, total, unit, initial)
        self.depth, self._last_line = depth, self.started
        self._tenth = self._tenths()

    def _tenths(self) -> int:
        if self.depth or not self.total:
            return 0
        return 10 * self.n // self.total

    def update(self, n=1):
        self.n += n
        now = self.reporter.clock()
        if self.total and self.n >= self.total:
            return  # 100 % is the final line's job
        since = now - self._last_line
        tenth = self._tenths()
        # a task of a few seconds gets its final line only, a long one a line per tenth
        if (tenth > self._tenth and since >= self.reporter.min_gap_s) or since >= self.reporter.interval_s:
            self._tenth, self._last_line = tenth, now
            self.reporter.write(self._line(now))

    def _line(self, now: float) -> str:
        count = f"{self.n:,}/{self.total:,} {self.unit}" if self.total else format_amount(self.n, self.unit)
        if self.unit == "B" and self.total:
            count = f"{format_amount(self.n, 'B')}/{format_amount(self.total, 'B')}"
        parts = [count + (f" ({100 * self.n // self.total}%)" if self.total else "")]
        parts.append(f"{format_duration(now - self.started)} elapsed")
        parts += [p for p in (self.rate(now), self.postfix) if p]
        return f"{'  ' * self.depth}{self.description}: " + ", ".join(parts)

    def close(self, failed: bool = False):
        if failed and self.n <= self.initial:
            # nothing was done: the error message that follows says all there is to say
            super().close(failed)
            return
        now = self.reporter.clock()
        elapsed = format_duration(now - self.started)
        if failed:
            done = f"stopped at {self.n:,}" + (f"/{self.total:,}" if self.total else "")
            text = f"{done} {self.unit} after {elapsed}"
        else:
            text = f"{format_amount(self.n, self.unit)} in {elapsed}"
            text += f" ({self.rate(now)})" if self.rate(now) else ""
        text += f", {self.postfix}" if self.postfix else ""
        self.reporter.write(f"{'  ' * self.depth}{self.description}: {text}")
        super().close(failed)


class _BarTask(_Task):
    """A tqdm bar on a terminal; nested tasks show their state in its postfix."""

    REFRESH_S = 0.2  # nested updates redraw the bar at most this often

    def __init__(self, reporter, description, total, unit, initial):
        super().__init__(reporter, description, total, unit, initial)
        from tqdm import tqdm

        # a terminal that reports no width (some pseudo-terminals) would get an empty bar
        width = {"dynamic_ncols": True} if _columns(reporter.stream) else {"ncols": 100}
        self.bar = tqdm(
            total=total, initial=initial, desc=description, unit=unit, file=reporter.stream,
            leave=True, unit_scale=unit == "B", mininterval=self.REFRESH_S, **width,
        )
        self._inner, self._drawn = "", self.started

    def set_total(self, total):
        super().set_total(total)
        self.bar.total = total
        self.bar.refresh()

    def update(self, n=1):
        self.n += n
        self.bar.update(n)

    def set_postfix(self, **values):
        super().set_postfix(**values)
        self._render(refresh=False)  # drawn with the next update

    def show_inner(self, text: str) -> None:
        """A nested task's state, drawn at most every REFRESH_S seconds ('' removes it)."""
        self._inner = text
        now = self.reporter.clock()
        refresh = not text or now - self._drawn >= self.REFRESH_S  # a finished one goes at once
        self._render(refresh)
        if refresh:
            self._drawn = now

    def _render(self, refresh: bool) -> None:
        self.bar.set_postfix_str(" | ".join(p for p in (self.postfix, self._inner) if p), refresh=refresh)

    def close(self, failed: bool = False):
        self._inner = ""
        self._render(refresh=False)
        self.bar.close()
        super().close(failed)


class _InlineTask(_Task):
    """A task nested in a terminal bar: its state is part of that bar's postfix."""

    def __init__(self, reporter, description, total, unit, initial, root: _BarTask):
        super().__init__(reporter, description, total, unit, initial)
        self.root = root
        root.show_inner(self.status())

    def status(self) -> str:
        count = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
        return f"{self.description} {count}" + (f" ({self.postfix})" if self.postfix else "")

    def set_total(self, total):
        super().set_total(total)
        self.root.show_inner(self.status())

    def update(self, n=1):
        self.n += n
        self.root.show_inner(self.status())

    def set_postfix(self, **values):
        super().set_postfix(**values)
        self.root.show_inner(self.status())


# --- the reporter ---------------------------------------------------------------------------


class Reporter:
    """Creates tasks and writes lines for the command line (see the module docstring).

    ``mode`` is 'auto' (a bar if the stream is a terminal, else lines), 'bar', 'lines' or
    'off'; ``quiet=True`` means 'off'. ``stream`` defaults to the current sys.stderr, looked up
    at each write. In lines mode a task writes a line at least every ``interval_s`` seconds,
    and at each tenth of its total when ``min_gap_s`` has passed since its last line.
    ``clock`` is injectable for tests.
    """

    def __init__(self, stream=None, *, quiet: bool = False, mode: str = "auto",
                 interval_s: float = 60.0, min_gap_s: float = 2.0, clock=time.monotonic):
        if mode not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"progress mode '{mode}' is not one of auto, bar, lines, off")
        self._stream, self.clock = stream, clock
        self.interval_s, self.min_gap_s = interval_s, min_gap_s
        if quiet:
            mode = "off"
        elif mode == "auto":
            mode = "bar" if _isatty(self.stream) else "lines"
        self.mode = mode
        self._open: list[_Task] = []

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    @property
    def quiet(self) -> bool:
        return self.mode == "off"

    def task(self, description: str, total: int | None = None, unit: str = "it",
             initial: int = 0):
        """A Progress for one operation; use it as a context manager (or call close())."""
        if self.mode == "off":
            return NULL
        args = (self, description, total, unit, initial)
        if self.mode == "lines":
            task = _LineTask(*args, depth=len(self._open))
        elif self._open and isinstance(self._open[0], _BarTask):
            task = _InlineTask(*args, root=self._open[0])
        else:
            task = _BarTask(*args)
        self._open.append(task)
        return task

    def _closed(self, task: _Task) -> None:
        if task in self._open:
            self._open.remove(task)
        inner = [t for t in self._open if isinstance(t, _InlineTask)]
        if isinstance(task, _InlineTask):
            task.root.show_inner(inner[-1].status() if inner else "")

    def write(self, message: str) -> None:
        """One line that does not break a bar (log records come through here)."""
        if self.mode == "bar" and self._open:
            from tqdm import tqdm

            tqdm.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a real terminal
        return 0


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
