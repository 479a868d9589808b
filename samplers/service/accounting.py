"""What each session, and the service as a whole, has used: calls, samples, QPU access time,
time spent waiting in the queue and time spent sampling; and the status table that shows it.

When several sessions' requests run as one packed call, each is charged an equal share of the
call's sampling time (they have the same shapes, hence the same work) and its own queue wait.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class Usage:
    calls: int = 0
    samples: int = 0
    qpu_access_time_us: float = 0.0
    queue_wait_s: float = 0.0
    sampling_s: float = 0.0

    def add(self, other: "Usage") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict:
        return asdict(self)


def qpu_access_time_us(info: dict) -> float:
    """QPU access time a sampler reported for one call (µs), 0 for classical samplers."""
    value = info.get("qpu_access_time_us")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return 0.0


def charge(info: dict, num_samples: int, queue_wait_s: float, sampling_s: float) -> Usage:
    """The usage of one call."""
    return Usage(1, num_samples, qpu_access_time_us(info), queue_wait_s, sampling_s)


def info_share(usage: Usage, session_total: Usage, packed_with: int) -> dict:
    """The keys a draw's `info` carries about the service: this call's share, the session's
    running totals, and how many sessions' requests ran in the same packed call."""
    return {
        "service_queue_wait_s": usage.queue_wait_s,
        "service_sampling_s": usage.sampling_s,
        "service_qpu_access_time_us": usage.qpu_access_time_us,
        "service_packed_with": packed_with,
        "service_session_calls": session_total.calls,
        "service_session_samples": session_total.samples,
        "service_session_qpu_access_time_us": session_total.qpu_access_time_us,
    }


COLUMNS = (
    ("session", "session", "{}"),
    ("label", "client", "{}"),
    ("calls", "calls", "{:,}"),
    ("samples", "samples", "{:,}"),
    ("qpu_access_time_us", "QPU access (ms)", "{:.1f}"),
    ("queue_wait_s", "queue wait (s)", "{:.3f}"),
    ("sampling_s", "sampling (s)", "{:.3f}"),
    ("idle_s", "idle (s)", "{:.0f}"),
)


def _cell(key: str, fmt: str, row: dict) -> str:
    value = row.get(key)
    if value is None or value == "":
        return "-"
    if key == "qpu_access_time_us":
        value = value / 1000
    return fmt.format(value)


def format_table(rows: list[dict]) -> str:
    """Rows (one per session, then a total) as an aligned text table."""
    header = [title for _, title, _ in COLUMNS]
    body = [[_cell(key, fmt, row) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), *(line(r) for r in body)])
