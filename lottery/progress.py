"""Progress reporting (placeholder interface; see experiments for the CLI)."""

from __future__ import annotations


class NullProgress:
  """Prints nothing but the per-round lines (to `line_fn`)."""

  def __init__(self, line_fn=None):
    self._line = line_fn
    self._where = ""

  def info(self, line: str) -> None:
    del line

  def job_start(self, name: str, start: int, stop: int) -> None:
    del stop
    self._where = f"{name} step {start}"
    self._name = name

  def job_step(self, step: int) -> None:
    self._where = f"{self._name} step {step}"

  def job_end(self) -> None:
    pass

  def line(self, text: str) -> None:
    if self._line:
      self._line(text)

  def where(self) -> str:
    return self._where
