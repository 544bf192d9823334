"""Controls: what a ticket is compared with, by name.

A control takes the ticket's job (its mask and starting weights) and returns
the mask, weights and model state that the control trains, exactly like the
ticket. Register new ones (e.g. an inverted-score or a shuffled mask) with
`@register('name')`; `config.controls` names them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from lottery import pruning
from lottery.registry import Registry


@dataclasses.dataclass(frozen=True)
class Start:
  """What a training run starts from."""
  mask: Any
  params: Any
  model_state: Any


# (experiment, the ticket's Start, key) -> the control's Start
ControlFn = Callable[[Any, Start, jax.Array], Start]
_CONTROLS = Registry("control", "controls")
register = _CONTROLS.register
unregister = _CONTROLS.unregister
names = _CONTROLS.names
get = _CONTROLS.get


@register("reinit")
def reinit(exp, ticket: Start, key: jax.Array) -> Start:
  """The ticket's mask on fresh weights (and model state) drawn from `key`."""
  params, model_state = exp.init(key)
  return Start(ticket.mask, params, model_state)


@register("random_prune")
def random_prune(exp, ticket: Start, key: jax.Array) -> Start:
  """The ticket's per-layer densities at random positions, on the ticket's
  own starting weights."""
  del exp
  return Start(pruning.random_like(ticket.mask, key), ticket.params,
               ticket.model_state)


@register("shuffle")
def shuffle(exp, ticket: Start, key: jax.Array) -> Start:
  """The ticket's mask randomly permuted within each layer (Frankle et al.
  2021's sanity check of pruning at init): same per-layer densities, random
  positions, the ticket's own starting weights.

  The same operation as 'random_prune' (`pruning.random_like`), under the
  name the pruning-at-init literature uses and with its own random stream
  (`rng.stream(seed, 'shuffle', ...)`). The inverted-score check needs the
  scores, not only the ticket, so it lives in `lottery.pai`.
  """
  del exp
  return Start(pruning.random_like(ticket.mask, key), ticket.params,
               ticket.model_state)


@register("scratch")
def scratch(exp, ticket: Start, key: jax.Array) -> Start:
  """Liu et al. 2019's scratch baseline ("Rethinking the value of network
  pruning"): the architecture the ticket's mask shrinks to, trained from its
  own fresh initialization (drawn from `key`), as the ticket's mask on the
  full-size model (`lottery.shrink.scratch`). For structured (neuron)
  tickets; the model must be one `lottery.shrink` can rebuild."""
  from lottery.shrink import scratch as scratch_init  # pylint: disable=g-import-not-at-top
  params, model_state = scratch_init(
      exp.model, ticket.params, ticket.model_state, ticket.mask, key,
      exp.dataset.x_train[:1])
  return Start(ticket.mask, params, model_state)
