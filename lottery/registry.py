"""Registries: functions by name, so configs stay strings.

Scores, controls and augmentations are each a `Registry`; a user adds their
own with `@registry.register('name')` and names it in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lottery.errors import LotteryError


class Registry:
  """Functions by name.

  Args:
    what: what is registered, for errors ('score', 'control', ...).
    field: the config field that names them, for errors.
  """

  def __init__(self, what: str, field: str):
    self.what = what
    self.field = field
    self._fns: dict[str, Callable[..., Any]] = {}

  def register(self, name: str):
    """Decorator registering a function under `name`."""
    def deco(fn):
      self._fns[name] = fn
      return fn
    return deco

  def names(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self._fns)

  def get(self, name: str, *, field: str | None = None) -> Callable[..., Any]:
    """The function registered as `name` (LotteryError naming `field`)."""
    if name not in self._fns:
      raise LotteryError(f"{field or self.field}: unknown {self.what}, must "
                         f"be one of {self.names()} (got {name!r})")
    return self._fns[name]
