"""Flax models, registered by name so configs stay strings.

Every model maps a batch of inputs (N, ...) to logits (N, num_classes) and is
called as `model.apply(variables, x, train=...)`: models with BatchNorm
normalize with batch statistics and update them when `train=True` (apply with
`mutable=['batch_stats']`) and use the running averages when `train=False`;
models without state ignore `train`. A model's *state* is every variable
collection other than 'params' (e.g. 'batch_stats'); it is never pruned.

Layer names are explicit ('fc1', 'conv2', 'out') so pruning patterns such as
'out/kernel' read naturally; every model names its output layer 'out'.

A factory may take options beyond `num_classes` (e.g. ResNet's `depth` and
`width`); `get` passes them through and refuses the ones a factory does not
take, and `options_of` lists them for config validation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from lottery.errors import LotteryError
from lottery.registry import Registry

_MODELS = Registry("model", "model.name")


def register(name: str):
  """Decorator registering a factory `(num_classes, **options) -> nn.Module`.

  Options are the factory's keyword parameters other than `num_classes`; give
  each a default so that a config that leaves it out gets the model's own.
  """
  return _MODELS.register(name)


def unregister(name: str) -> Callable[..., nn.Module]:
  """Removes the model `name` and returns its factory (the undo of
  `register`; LotteryError if `name` is not registered)."""
  return _MODELS.unregister(name)


def names() -> list[str]:
  """The registered model names, sorted."""
  return _MODELS.names()


def _known(name: str, field: str) -> Callable[..., nn.Module]:
  return _MODELS.get(name, field=field)


def options_of(name: str, *, field: str = "model.name") -> tuple[str, ...]:
  """The options (keyword parameters besides `num_classes`) `name` accepts.

  Args:
    name: a registered model name.
    field: config field named in the error for an unknown name.

  Returns:
    Option names in the factory's signature order, e.g. ('depth', 'width').

  Raises:
    LotteryError: if `name` is not registered.
  """
  params = inspect.signature(_known(name, field)).parameters
  return tuple(p for p in params if p != "num_classes")


def defaults_of(name: str) -> dict[str, Any]:
  """{option: the factory's default} of the registered model `name` ({} for
  an unknown name)."""
  if not isinstance(name, str) or name not in _MODELS:
    return {}
  params = inspect.signature(_known(name, "model.name")).parameters
  return {p: v.default for p, v in params.items()
          if p != "num_classes" and v.default is not inspect.Parameter.empty}


def get(name: str, num_classes: int, *, field: str = "model.name",
        **options: Any) -> nn.Module:
  """Builds the model registered as `name`.

  Args:
    name: a registered model name (see `names()`).
    num_classes: size of the output layer.
    field: config field named in the error for an unknown name.
    **options: passed to the factory, e.g. `depth=32, width=16` for 'resnet'.
      Leave an option out for the model's default.

  Returns:
    The Flax module (not initialized).

  Raises:
    LotteryError: for an unknown name, an option the factory does not take
      ('model.<option>: ...'), or an invalid option value.
  """
  factory = _known(name, field)
  accepted = options_of(name, field=field)
  for k, v in options.items():
    if k not in accepted:
      takes = f"whose options are {list(accepted)}" if accepted else \
          "which takes no options"
      raise LotteryError(
          f"model.{k}: not an option of model {name!r}, {takes} (got {v!r})")
  return factory(num_classes=num_classes, **options)


def check_poolable(x: Any, model: str, pools: int) -> None:
  """Raises LotteryError (naming data) unless every spatial side of the
  input `x` (N, *sides, C) survives `pools` halvings: at least 2**pools."""
  sides = tuple(x.shape[1:-1])
  if pools and min(sides, default=0) < 2**pools:
    raise LotteryError(
        f"data: inputs of {'x'.join(map(str, sides))} are too small for "
        f"{model!r}, which halves them {pools} times (each side needs at "
        f"least {2**pools})")


def check_int(option: str, value: Any, lo: int) -> None:
  """Raises LotteryError unless `value` is an int >= lo (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < lo:
    raise LotteryError(
        f"model.{option}: must be an integer >= {lo} (got {value!r})")


# Importing the families registers them.
from lottery.models import conv as _conv  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from lottery.models import mlp as _mlp  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from lottery.models import resnet as _resnet  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from lottery.models import vgg as _vgg  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from lottery.models import vit as _vit  # noqa: E402,F401  pylint: disable=g-import-not-at-top
