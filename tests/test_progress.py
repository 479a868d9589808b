"""Progress output: its shape on a terminal, in a log and when quiet, and log records through it."""

import io
import logging
import re
import warnings

import pytest

from dvae_q import logs, progress
from dvae_q.logs import configure_logging
from dvae_q.progress import NULL, Progress, Reporter, as_progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    logging.captureWarnings(False)
    for name in logs.LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logs._ReporterHandler):
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def run_training(reporter, clock, steps=100, step_s=0.5, nested_at=49, nested=50, nested_s=1.0):
    """A training-shaped use: a step task with a loss postfix and an evaluation nested inside."""
    with reporter.task("train", total=steps, unit="steps") as bar:
        for i in range(steps):
            clock.now += step_s
            bar.update()
            bar.set_postfix(loss=100.0 / (i + 1))
            if i == nested_at:
                with reporter.task("AIS log Z", unit="temperatures") as inner:
                    inner.set_total(nested)  # the library function sets its own total
                    for _ in range(nested):
                        clock.now += nested_s
                        inner.update()


# --- not a terminal: plain lines ------------------------------------------------------------


def test_log_mode_writes_plain_bounded_lines_and_a_final_line():
    out, clock = io.StringIO(), FakeClock()
    reporter = Reporter(out, clock=clock, interval_s=1000.0)  # no timed lines in this run
    assert reporter.mode == "lines"
    run_training(reporter, clock)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no carriage-return frames, no cursor moves
    lines = text.splitlines()
    # 9 tenths (10 % .. 90 %) of the outer task, the nested task's final line, the outer final
    assert len(lines) == 11
    assert [line.split(":")[0] for line in lines].count("train") == 10
    assert lines[0].startswith("train: 10/100 steps (10%)")
    assert lines[5] == "  AIS log Z: 50 temperatures in 50.0 s (1 temperatures/s)"
    assert lines[-1].startswith("train: 100 steps in 1:40")
    assert lines[-1].endswith("loss=1")


def test_log_mode_timed_lines_for_long_tasks():
    out, clock = io.StringIO(), FakeClock()
    reporter = Reporter(out, clock=clock, interval_s=30.0)
    with reporter.task("evaluate", unit="points") as task:  # no total: only timed lines
        for _ in range(100):
            clock.now += 1.0
            task.update(10)
    lines = out.getvalue().splitlines()
    # one line per 30 s of a 100 s task (at 30, 60, 90 s), then the final line
    assert len(lines) == 4
    assert lines[0] == "evaluate: 300 points, 30.0 s elapsed, 10 points/s"
    assert lines[-1] == "evaluate: 1,000 points in 1:40 (10 points/s)"


def test_log_mode_line_for_a_failed_task():
    out, clock = io.StringIO(), FakeClock()
    reporter = Reporter(out, clock=clock)
    with pytest.raises(RuntimeError):
        with reporter.task("train", total=200, unit="steps") as task:
            clock.now += 3.0
            task.update(7)
            raise RuntimeError("sampler failed")
    assert out.getvalue() == "train: stopped at 7/200 steps after 3.0 s\n"


def test_log_mode_resumed_task_starts_at_its_initial_count():
    out, clock = io.StringIO(), FakeClock()
    reporter = Reporter(out, clock=clock, interval_s=1000.0)
    with reporter.task("train", total=100, unit="steps", initial=55) as task:
        for _ in range(45):
            clock.now += 1.0
            task.update()
    lines = out.getvalue().splitlines()
    # tenths already passed before the resume are not repeated: 60, 70, 80, 90 %, then final
    assert [line.split(" ")[1] for line in lines[:-1]] == ["60/100", "70/100", "80/100", "90/100"]
    assert lines[-1] == "train: 100 steps in 45.0 s (1 steps/s)"  # rate counts this session only


def test_bytes_are_reported_in_decimal_units():
    out, clock = io.StringIO(), FakeClock()
    reporter = Reporter(out, clock=clock, interval_s=1000.0)
    with reporter.task("fetch", unit="B") as task:
        task.set_total(4_000_000)
        for _ in range(4):
            clock.now += 2.0
            task.update(1_000_000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "fetch: 1.0 MB/4.0 MB (25%), 2.0 s elapsed, 500.0 kB/s"
    assert lines[-1] == "fetch: 4.0 MB in 8.0 s (500.0 kB/s)"


def test_log_mode_quick_task_writes_only_its_final_line():
    out, clock = io.StringIO(), FakeClock()
    reporter = Reporter(out, clock=clock)  # tenths at least 2 s apart by default
    with reporter.task("final AIS log Z", unit="temperatures") as task:
        task.set_total(299)
        for _ in range(299):
            clock.now += 0.005
            task.update()
    assert out.getvalue() == "final AIS log Z: 299 temperatures in 1.5 s (200 temperatures/s)\n"


# --- a terminal: one tqdm bar -----------------------------------------------------------------


def frames(text):
    """The successive states of the terminal line: what each carriage return redraws."""
    return [f for f in re.split(r"[\r\n]", text) if f.strip()]


def test_terminal_mode_is_one_bar_with_nested_work_in_its_postfix():
    out, clock = FakeTerminal(), FakeClock()
    reporter = Reporter(out, clock=clock)
    assert reporter.mode == "bar"
    run_training(reporter, clock)
    text = out.getvalue()
    assert "\r" in text  # a live bar
    assert text.count("\n") == 1  # the finished bar; the nested task added no line of its own
    states = frames(text)
    nested = [s for s in states if "AIS log Z" in s]
    assert nested and all(s.startswith("train:  50%") for s in nested)
    assert any("AIS log Z 50/50" in s for s in nested)
    assert "AIS log Z" not in states[-1]  # removed once the evaluation ended
    assert re.match(r"train: 100%\|#+\| 100/100 .*loss=1\]$", states[-1])


def test_terminal_log_lines_are_written_above_the_bar():
    out, clock = FakeTerminal(), FakeClock()
    reporter = Reporter(out, clock=clock)
    configure_logging(reporter)
    with reporter.task("train", total=10, unit="steps") as bar:
        bar.update(5)
        logging.getLogger("dvae_q.training.loop").info("checkpoint written")
        bar.update(5)
    text = out.getvalue()
    assert "checkpoint written\n" in text
    after = text.split("checkpoint written\n", 1)[1]
    assert "train:" in after  # the bar is drawn again below the message
    assert frames(text)[-1].startswith("train: 100%")


# --- quiet, null, protocol, logging -------------------------------------------------------------


def test_quiet_prints_no_progress_but_still_warnings():
    out, clock = FakeTerminal(), FakeClock()
    reporter = Reporter(out, quiet=True, clock=clock)
    configure_logging(reporter)
    run_training(reporter, clock)
    logging.getLogger("dvae_q.training.loop").info("an info line")
    assert out.getvalue() == ""
    logging.getLogger("samplers.qpu").warning("chain breaks above %d%%", 10)
    assert out.getvalue() == "warning: chain breaks above 10%\n"


@pytest.mark.parametrize("mode", ["bar", "lines", "off"])
def test_every_task_is_a_progress(mode):
    reporter = Reporter(FakeTerminal(), mode=mode)
    with reporter.task("x", total=3) as task:
        assert isinstance(task, Progress)
        with reporter.task("y") as inner:
            assert isinstance(inner, Progress)
    assert isinstance(NULL, Progress)
    assert as_progress(None) is NULL and as_progress(task) is task


def test_null_progress_does_nothing():
    with NULL as p:
        p.set_total(3)
        p.update(2)
        p.set_postfix(loss=1.0)


def test_configure_logging_twice_writes_each_record_once():
    out = io.StringIO()
    reporter = Reporter(out)
    configure_logging(reporter)
    configure_logging(reporter)
    logging.getLogger("topologies.loader").info("embedding cached")
    assert out.getvalue() == "embedding cached\n"


def test_python_warnings_go_through_the_reporter():
    out = io.StringIO()
    configure_logging(Reporter(out))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # catch_warnings restored showwarning on entry
        warnings.warn("the given array is odd", UserWarning)
    assert out.getvalue().startswith("warning: ")
    assert "UserWarning: the given array is odd" in out.getvalue()


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="not one of auto, bar, lines, off"):
        Reporter(mode="rainbow")


def test_durations_and_amounts():
    assert progress.format_duration(4.25) == "4.2 s"
    assert progress.format_duration(100) == "1:40"
    assert progress.format_duration(3 * 3600 + 61) == "3:01:01"
    assert progress.format_amount(1500, "steps") == "1,500 steps"
    assert progress.format_amount(2_500_000_000, "B") == "2.5 GB"
    assert progress.format_postfix({"loss": 123.456789, "val": None, "step": 3}) == "loss=123.5, step=3"


def test_terminal_without_a_width_still_gets_a_bar():
    pty = pytest.importorskip("pty")
    import os
    import select

    master, slave = pty.openpty()  # a fresh pseudo-terminal reports 0 columns
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            reporter = Reporter(stream)
            assert reporter.mode == "bar"
            with reporter.task("train", total=4, unit="steps") as bar:
                bar.update(4)
        text = b""
        # the kernel hands pty output to the master side asynchronously: read up to the newline
        # that closes the bar (the timeout only guards against a hang)
        while b"\n" not in text and select.select([master], [], [], 10.0)[0]:
            text += os.read(master, 65536)
        text = text.decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "train: 100%" in text and "4/4" in text
