"""Registries: functions (or classes) by name, so configs stay strings.

Every name-to-function registry of the framework is a `Registry`: models
(`lottery.models`), scores (`lottery.scores`), controls
(`lottery.controls`), distributions (`lottery.distributions`),
augmentations (`lottery.augment`), sparse-training methods
(`lottery.sparse_updates`), IMP's resets (`lottery.imp.RESETS`) and methods
(`lottery.method`). A user adds their own with the module's `register`:

  @scores.register("my_score")             # fn(params, key)
  @scores.register("my_data_score", data=True)

and names it in the config. Keyword arguments of `register` are the entry's
info (a score's `data`, a sparse method's `dynamic`), read back with
`info(name)` and filtered on by `names(**info)`. `get(name)` of an unknown
name raises LotteryError naming the config field: '<field>: unknown <what>,
must be one of [...] (got 'name')'. The module's `unregister(name)` removes
an entry again (a test's or a notebook's own, once it is done with it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from lottery.errors import LotteryError


class Registry:
  """Functions by name, each with a dict of info.

  Args:
    what: what is registered, for errors ('score', 'control', ...).
    field: the config field that names them, for errors.
  """

  def __init__(self, what: str, field: str):
    self.what = what
    self.field = field
    self._entries: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}

  def register(self, name: str, **info: Any):
    """Decorator registering a function under `name`, with `info` (keyword
    arguments kept with it; see `info`). A name registered again is
    replaced."""
    def deco(fn):
      self._entries[name] = (fn, dict(info))
      return fn
    return deco

  def unregister(self, name: str, *,
                 field: str | None = None) -> Callable[..., Any]:
    """Removes the entry `name` and returns its function: the undo of
    `register` (a built-in that `name` replaced is not restored).

    Raises:
      LotteryError: if `name` is not registered (naming `field`).
    """
    fn = self._entry(name, field)[0]
    del self._entries[name]
    return fn

  def names(self, **where: Any) -> list[str]:
    """The registered names, sorted; with `where`, only those whose info
    has every given value (e.g. `names(data=False)`)."""
    return sorted(k for k, (_, info) in self._entries.items()
                  if all(k2 in info and info[k2] == v
                         for k2, v in where.items()))

  def _entry(self, name: str, field: str | None):
    if name not in self._entries:
      raise LotteryError(f"{field or self.field}: unknown {self.what}, must "
                         f"be one of {self.names()} (got {name!r})")
    return self._entries[name]

  def get(self, name: str, *, field: str | None = None) -> Callable[..., Any]:
    """The function registered as `name` (LotteryError naming `field`)."""
    return self._entry(name, field)[0]

  def info(self, name: str, *, field: str | None = None) -> dict[str, Any]:
    """The info `name` was registered with (a copy; LotteryError naming
    `field` for an unknown name)."""
    return dict(self._entry(name, field)[1])

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, name: str) -> Callable[..., Any]:
    return self.get(name)

  def __repr__(self) -> str:
    return f"Registry({self.what!r}, {self.field!r}: {self.names()})"
