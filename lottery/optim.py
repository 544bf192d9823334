"""Optimizers and learning-rate schedules by name.

The learning rate is not baked into the optimizer: every optimizer is built at
rate 1 and followed by `lottery.step.scale_by_learning_rate_arg`, and the train
step passes the rate of each step from an array computed on the host by
`learning_rates`. So replaying a schedule from step k (weight rewinding),
replaying it whole (learning-rate rewinding) or holding it at its final value
(fine-tuning) never recompiles, with no `optax.inject_hyperparams`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import optax

from lottery import masks
from lottery.errors import LotteryError
from lottery.step import keep_pruned
from lottery.step import scale_by_learning_rate_arg

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


def make_optimizer(training) -> optax.GradientTransformationExtraArgs:
  """The optimizer of `config.training`, masked, with the rate an argument.

  Args:
    training: the `config.training` ConfigDict (optimizer, momentum, nesterov,
      weight_decay, weight_decay_on).

  Returns:
    `keep_pruned(chain(<optimizer at rate 1>, scale_by_learning_rate_arg()))`:
    its `update` takes `mask=` and `learning_rate=`. 'sgd' adds weight decay
    to the gradient before momentum (coupled, as PyTorch's SGD); 'adam' adds it
    likewise (Adam with L2); 'adamw' decays decoupled from the gradient. Each
    decays only the parameters `weight_decay_on` matches (`decay_mask`).
  """
  name, wd = training.optimizer, training.weight_decay
  on = decay_mask(training.get("weight_decay_on", (".*",)))

  def factory(learning_rate):
    if name == "sgd":
      return optax.chain(
          optax.add_decayed_weights(wd, mask=on),
          optax.sgd(learning_rate, momentum=training.momentum or None,
                    nesterov=training.nesterov))
    if name == "adam":
      return optax.chain(optax.add_decayed_weights(wd, mask=on),
                         optax.adam(learning_rate))
    if name == "adamw":
      return optax.adamw(learning_rate, weight_decay=wd, mask=on)
    raise LotteryError(f"training.optimizer: unknown optimizer {name!r} "
                       f"(known: {list(OPTIMIZERS)})")

  return keep_pruned(optax.chain(factory(1.0), scale_by_learning_rate_arg()))


def decay_mask(patterns) -> Callable[[Any], Any] | None:
  """optax's `mask` of weight decay: params -> {leaf: whether its path fully
  matches one of `patterns`} (regexes over '/'-joined paths, as
  `pruning.prunable`); None (every parameter) for ('.*',).

  Raises (when the optimizer is initialized):
    LotteryError: naming training.weight_decay_on if no parameter matches.
  """
  field = "training.weight_decay_on"
  if tuple(patterns) == (".*",):
    return None
  masks.compile_patterns(patterns, field)  # An invalid one now.
  return functools.partial(masks.matching, patterns=tuple(patterns),
                           field=field)


def make_schedule(training) -> optax.Schedule:
  """The learning-rate schedule of `config.training`, as an optax schedule."""
  lr, steps = training.learning_rate, training.steps
  if training.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif training.schedule == "step":
    main = optax.piecewise_constant_schedule(
        lr, {int(b): training.lr_decay for b in training.lr_boundaries})
  elif training.schedule == "cosine":
    main = optax.cosine_decay_schedule(
        lr, max(steps - training.warmup_steps, 1))
  else:
    raise LotteryError(f"training.schedule: unknown schedule "
                       f"{training.schedule!r} (known: {list(SCHEDULES)})")
  if training.warmup_steps:
    warm = optax.linear_schedule(0.0, lr, training.warmup_steps)
    return optax.join_schedules([warm, main], [training.warmup_steps])
  return main


def learning_rates(schedule: optax.Schedule, start: int, stop: int
                   ) -> np.ndarray:
  """float32 rates for steps start..stop-1 (the rate used by each step)."""
  rates = np.asarray(schedule(np.arange(start, stop)), dtype=np.float32)
  return np.broadcast_to(rates, (stop - start,)).copy()  # constant -> scalar
