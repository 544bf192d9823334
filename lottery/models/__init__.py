"""Flax models, registered by name so configs stay strings.

Every model maps a batch of inputs (N, ...) to logits (N, num_classes). Layer
names are explicit ('fc1', 'conv2', 'out') so pruning patterns such as
'out/kernel' read naturally.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from lottery.errors import LotteryError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  """Decorator registering a factory `(num_classes) -> nn.Module`."""
  def deco(fn):
    _MODELS[name] = fn
    return fn
  return deco


def names() -> list[str]:
  return sorted(_MODELS)


def get(name: str, num_classes: int, *, field: str = "model.name") -> nn.Module:
  """Builds the model registered as `name`."""
  if name not in _MODELS:
    raise LotteryError(f"{field}: unknown model {name!r} (known: {names()})")
  return _MODELS[name](num_classes=num_classes)


# Importing the families registers them.
from lottery.models import conv as _conv  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from lottery.models import mlp as _mlp  # noqa: E402,F401  pylint: disable=g-import-not-at-top
