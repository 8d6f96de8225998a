"""A line per stage of ``keel run`` and ``keel simulate``, and a progress bar for long stages.

A stage prints a line when it starts and one when it ends (its time and counts). While one
runs longer than ``BAR_AFTER_SECONDS`` on a terminal, a bar redraws in place the steps its
Dagster runs have finished; piped or captured output gets the plain lines only.

The steps are counted by ``keel_progress``, a Dagster logger (Dagster's own hook for every
event of a run) that Keel's runs enable through their run config; the UI's runs do not.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from keel.app.logs import DAGSTER_LOG_LEVEL, CommandLog
from keel.render.terminal import progress_line, stage_ended, stage_started

BAR_AFTER_SECONDS = 3.0
REDRAW_SECONDS = 0.5


@dataclass
class Stage:
    """What a stage's Dagster runs did so far, counted from their events."""

    name: str
    started: float = field(default_factory=time.perf_counter)
    steps_total: int = 0
    steps_done: int = 0
    steps_failed: int = 0
    materializations: int = 0
    checks: int = 0
    counts: str = ""  # the end line's counts, set by the caller when it knows them
    failed: bool = False

    def expect(self, job: dg.JobDefinition) -> None:
        """Add a run of ``job`` to the bar's total (one step per node of its graph)."""
        self.steps_total += len(job.graph.nodes)

    def observe(self, event: dg.DagsterEvent) -> None:
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_SUCCESS:
            self.steps_done += 1
        elif kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_SKIPPED):
            self.steps_done += 1
            self.steps_failed += kind == dg.DagsterEventType.STEP_FAILURE
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
            self.materializations += 1
        elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            self.checks += 1

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


_current: Stage | None = None
_lock = threading.Lock()


class _StageHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "dagster_event", None)
        if event is None:
            event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        with _lock:
            stage = _current
        if stage is not None and event is not None:
            stage.observe(event)


@dg.logger(description="Counts the steps of Keel's runs for the stage lines of keel run and keel simulate.")
def keel_progress(init_context: dg.InitLoggerContext) -> logging.Logger:
    progress = logging.Logger("keel_progress", level=logging.DEBUG)
    progress.addHandler(_StageHandler(level=logging.DEBUG))
    return progress


def run_config(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A run config for Keel's runs: ``extra`` and the loggers (Dagster's console logger at
    DEBUG, whose lines go to the command's log file, and the stage counter)."""
    config = dict(extra or {})
    config["loggers"] = {
        **config.get("loggers", {}),
        "console": {"config": {"log_level": DAGSTER_LOG_LEVEL}},
        "keel_progress": {},
    }
    return config


class Stages:
    """The stage lines of one command, written to its terminal (and log file)."""

    def __init__(self, log: CommandLog, bar: bool | None = None):
        self.log = log
        isatty = getattr(log.out, "isatty", lambda: False)
        self.bar = isatty() if bar is None else bar

    def say(self, line: str) -> None:
        """A line within a stage: the bar, if drawn, is erased first and redrawn below it."""
        with _lock:
            if self.bar and _current is not None:
                self.log.out.write("\r\033[K")
            self.log.say(line)

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[Stage]:
        global _current
        stage = Stage(name)
        self.log.say(stage_started(name, detail))
        with _lock:
            _current = stage
        stop = threading.Event()
        drawer = threading.Thread(target=self._draw, args=(stage, stop), daemon=True) if self.bar else None
        if drawer is not None:
            drawer.start()
        try:
            yield stage
        except BaseException:
            stage.failed = True
            raise
        finally:
            stop.set()
            if drawer is not None:
                drawer.join()
            with _lock:
                _current = None
            self.log.say(stage_ended(name, stage.seconds, stage.counts, failed=stage.failed or stage.steps_failed > 0))

    def _draw(self, stage: Stage, stop: threading.Event) -> None:
        """Redraw the bar in place (carriage return, erase line) until the stage ends."""
        out = self.log.out
        if stop.wait(BAR_AFTER_SECONDS):
            return
        while not stop.wait(REDRAW_SECONDS):
            detail = f"{stage.materializations:,} materialized, {stage.checks:,} checks"
            with _lock:
                out.write("\r\033[K" + progress_line(stage.name, stage.steps_done, stage.steps_total, stage.seconds, detail))
                out.flush()
        with _lock:
            out.write("\r\033[K")
            out.flush()
