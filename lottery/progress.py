"""Progress of an experiment: start-up lines, a live bar per training run.

A driver (`lottery.imp.run`, ...) reports what it does to a `Progress`:

  progress.jobs(total=12, done=3)            # a resumed run: 3 jobs on disk
  progress.info("data: mnist1d, 4000 train / 1000 test")
  progress.job_start("round 3 ticket", 0, 1500)
  progress.job_step(500)                     # after every compiled chunk
  progress.job_end()
  progress.line("round  3/32  density ...")  # the kept per-round line

On a terminal the bar of the training run in flight (steps done / total,
steps/s, elapsed, ETA of the run and of the whole experiment) is redrawn in
place with '\\r'; elsewhere (CI, pipes, log files) the same text is printed as
a plain line at most once every `interval` seconds, so logs stay readable.
The bar and the start-up lines go to `stream` (stderr); the per-round lines go
to `out` (stdout), so `> results.txt` keeps exactly those.

`where()` names the position ('round 3 ticket step 120') for the message of an
interrupted run; `NullProgress` tracks it too but prints nothing (library use).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_duration(seconds: float) -> str:
  """'m:ss' or 'h:mm:ss'; '?' for an unknown (non-finite) duration."""
  if not math.isfinite(seconds):
    return "?"
  s = max(0, int(round(seconds)))
  h, s = divmod(s, 3600)
  m, s = divmod(s, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
  """Reports an experiment's progress on a terminal or in a log.

  Args:
    total_jobs: training runs in the whole experiment, if known (see `jobs`).
    stream: where the bar and `info` lines go (None: sys.stderr).
    live: redraw the bar in place; None: whether `stream` is a TTY.
    out: where `line` goes (None: sys.stdout).
    interval: seconds between two plain status lines when not live.
    clock: monotonic time in seconds (tests pass a fake one).
  """

  # Seconds between two redraws of the live bar: chunks may take milliseconds.
  _REDRAW = 0.1

  def __init__(self, *, total_jobs: int | None = None,
               stream: TextIO | None = None, live: bool | None = None,
               out: TextIO | None = None, interval: float = 10.0,
               clock: Callable[[], float] = time.monotonic):
    self.stream = sys.stderr if stream is None else stream
    self.out = sys.stdout if out is None else out
    if live is None:
      isatty = getattr(self.stream, "isatty", None)
      live = bool(isatty and isatty())
    self.live = live
    self.interval = interval
    self.clock = clock
    self.total_jobs = total_jobs
    self.jobs_done = 0
    self._job_times: list[float] = []  # Wall time of each finished job.
    # Each finished job's time at its steady rate, the first chunk (which
    # compiles) counted at that rate too.
    self._steady_times: list[float] = []
    self._rate = math.nan  # Steady steps/s of the last job that had one.
    self._name: str | None = None
    self._after = False  # Between a group's training and its next one.
    self._start = self._stop = self._step = self._saved = 0
    self._t_job = self._t_step = 0.0
    self._first: tuple[int, float] | None = None  # (step, time) of 1st chunk.
    self._running = False
    self._shown = 0  # Width of the bar on screen (live), 0: none.
    self._last_draw = -math.inf

  @classmethod
  def null(cls) -> NullProgress:
    """A Progress that prints nothing but still tracks `where()`."""
    return NullProgress()

  def jobs(self, total: int, done: int = 0) -> None:
    """Sets the number of training runs: `total` in all, `done` of them
    finished before this process started (a resumed experiment)."""
    self.total_jobs = total
    self.jobs_done = done

  def info(self, line: str) -> None:
    """A start-up line (data, model, mesh, compile time) on `stream`."""
    self._print(self.stream, line)

  def job_start(self, name: str, start: int, stop: int) -> None:
    """A training run `name` starts (or resumes) at step `start` of [0, stop)."""
    self._name, self._start, self._stop, self._step = name, start, stop, start
    self._saved, self._after = start, False
    self._t_job = self.clock()
    self._first = None
    self._running = True

  def group_trained(self, name: str) -> None:
    """The training runs of group `name` are finished and saved; what
    follows (its records: a stability pair's path evaluation) is where an
    interrupt now stops."""
    self._name, self._after = name, True

  def job_step(self, step: int) -> None:
    """The run in flight has reached `step` (after a compiled chunk)."""
    self._step = step
    now = self._t_step = self.clock()
    if self._first is None:
      self._first = (step, now)  # Its time includes the compilation.
    if self.live:
      if now - self._last_draw >= self._REDRAW or step >= self._stop:
        self._draw(now)
    elif now - self._last_draw >= self.interval:
      self._last_draw = now
      self._write(self.stream, self.status(now) + "\n")

  def job_saved(self, step: int) -> None:
    """The run in flight has a mid-run checkpoint at `step`."""
    self._saved = step

  def job_end(self) -> None:
    """The run in flight has finished."""
    self._saved = self._step
    took = self.clock() - self._t_job
    self._job_times.append(took)
    rate = self._steady_rate(self._t_step)
    if self._first is not None and rate > 0:
      self._rate = rate
      first_steps = self._first[0] - self._start
      took += first_steps / rate - (self._first[1] - self._t_job)
    self._steady_times.append(took)
    self.jobs_done += 1
    self._running = False
    self._clear()

  def line(self, text: str) -> None:
    """A line that stays (the per-round summary), on `out`."""
    self._print(self.out, text)

  def where(self) -> str:
    """The position, e.g. 'round 3 ticket step 120' ('start-up' before any
    training run), and where a rerun resumes that run when it is not there:
    'round 3 ticket step 450 (a rerun resumes it from step 200)'."""
    if self._name is None:
      return "start-up"
    if self._after:
      return f"{self._name}, after its training (its tickets are saved)"
    if self._saved < self._step:
      return (f"{self._name} step {self._step} (a rerun resumes it from step "
              f"{self._saved})")
    return f"{self._name} step {self._step}"

  def close(self) -> None:
    """Removes the live bar (before an error or interrupt message)."""
    self._clear()

  def status(self, now: float | None = None) -> str:
    """The status text of the run in flight, e.g.

    'round 3 ticket 120/200 steps  40.0 steps/s  elapsed 0:03  ETA 0:02 |
    jobs 5/12  ETA 0:20'.
    """
    now = self.clock() if now is None else now
    elapsed = now - self._t_job
    # Steps/s from the end of the first chunk on: that chunk paid for the
    # compilation (the last job's steady rate until a second chunk).
    rate = self._steady_rate(now)
    if not rate > 0:
      rate = self._rate
    left = (self._stop - self._step) / rate if rate > 0 else math.nan
    speed = f"{rate:.1f}" if math.isfinite(rate) else "?"
    text = (f"{self._name} {self._step}/{self._stop} steps  {speed} steps/s"
            f"  elapsed {format_duration(elapsed)}  ETA {format_duration(left)}")
    if self.total_jobs:
      # Jobs still to start after this one, each taking: the mean time of
      # the jobs finished here after the first (which compiled); else the
      # first's time at its steady rate; else this one's whole length at
      # its steady rate. Compilation is not counted as training.
      if len(self._job_times) > 1:
        per_job = sum(self._job_times[1:]) / (len(self._job_times) - 1)
      elif self._steady_times:
        per_job = self._steady_times[0]
      else:
        per_job = self._stop / rate if rate > 0 else math.nan
      after = max(self.total_jobs - self.jobs_done - 1, 0)
      total = left + after * per_job if after else left
      text += (f" | jobs {self.jobs_done}/{self.total_jobs}"
               f"  ETA {format_duration(total)}")
    return text

  def _steady_rate(self, now: float) -> float:
    """Steps/s of the run in flight after its first chunk (nan before its
    second chunk)."""
    if self._first is None or self._step <= self._first[0]:
      return math.nan
    return (self._step - self._first[0]) / max(now - self._first[1], 1e-9)

  def _draw(self, now: float) -> None:
    self._last_draw = now
    width = shutil.get_terminal_size((100, 24)).columns - 1
    text = self.status(now)[:width]
    pad = max(self._shown - len(text), 0)
    self._write(self.stream, "\r" + text + " " * pad)
    self._shown = len(text)

  def _clear(self) -> None:
    if self._shown:
      self._write(self.stream, "\r" + " " * self._shown + "\r")
      self._shown = 0

  def _print(self, stream: TextIO, text: str) -> None:
    # A kept line replaces the bar; the bar comes back below it.
    had_bar = bool(self._shown)
    self._clear()
    self._write(stream, text + "\n")
    if had_bar and self._running:
      self._draw(self.clock())

  def _write(self, stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()


class NullProgress(Progress):
  """Prints nothing; tracks the position for `where()` (library use).

  Args:
    line_fn: optional; receives the lines that stay (the per-round lines).
  """

  def __init__(self, line_fn: Callable[[str], None] | None = None):
    super().__init__(live=False, interval=math.inf)
    self._line_fn = line_fn

  def line(self, text: str) -> None:
    if self._line_fn is not None:
      self._line_fn(text)

  def _write(self, stream: TextIO, text: str) -> None:
    del stream, text
