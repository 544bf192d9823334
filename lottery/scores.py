"""Importance scores: one registry of functions that see the model and data.

Higher score = more important. Pruning removes the lowest-scoring surviving
weights (see `lottery.pruning`). Every score is reached through one call,

  scores.compute(name, apply_fn, params, mask, batch, key) -> score pytree

with `apply_fn(params, x) -> logits` (the model in evaluation mode), `batch =
(x, y)`, and the scores in the params' structure (scores of non-prunable leaves
are ignored by pruning). The network is scored as pruned: `params` are masked
by `mask` before the score function sees them.

Two kinds of score share the registry:

  params-only  `@register(name)`: fn(params, key). They need neither model
               nor data, so IMP can use them on trained weights
               (`pruning.score`): 'magnitude', 'random'.
  model-aware  `@register(name, data=True)`: fn(apply_fn, params, mask,
               batch, key). Pruning at initialization uses them
               (`pai.methods`): 'snip', 'grasp', 'synflow'.

`compute` runs either kind (a params-only score ignores the model and the
batch); `get(name)` returns the (params, key) function IMP calls, and refuses a
model-aware score. `names()` lists the params-only scores (what
`pruning.score` accepts), `all_names()` every score (what `pai.methods`
accepts). Every function here is traceable: `jax.jit` and `lax.fori_loop`
over iterative pruning compile it once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from lottery import masks as masks_lib
from lottery.errors import LotteryError
from lottery.registry import Registry

ScoreFn = Callable[[Any, jax.Array], Any]
# apply_fn(params, x) -> logits
ApplyFn = Callable[[Any, jax.Array], jax.Array]
# fn(apply_fn, params, mask, batch, key) -> scores
ModelScoreFn = Callable[[ApplyFn, Any, Any, tuple, jax.Array], Any]

# GraSP's softmax temperature (the authors' code and Synaptic-Flow's: 200).
GRASP_TEMPERATURE = 200.0


# Every score, with info `data`: False for fn(params, key), True for
# fn(apply_fn, params, mask, batch, key).
_SCORES = Registry("score", "pai.methods")


def register(name: str, *, data: bool = False):
  """Decorator registering a score under `name`.

  Args:
    name: the name configs use.
    data: False (default): `fn(params, key)`, usable by IMP and pruning at
      init; True: `fn(apply_fn, params, mask, batch, key)`, pruning at init
      only (`params` arrive masked).
  """
  return _SCORES.register(name, data=bool(data))


def unregister(name: str) -> Callable[..., Any]:
  """Removes the score `name` and returns its function (the undo of
  `register`; LotteryError if `name` is not registered)."""
  return _SCORES.unregister(name)


def names() -> list[str]:
  """The params-only scores, sorted: what IMP's `pruning.score` accepts."""
  return _SCORES.names(data=False)


def all_names() -> list[str]:
  """Every registered score, sorted: what `pai.methods` accepts."""
  return _SCORES.names()


def needs_model(name: str) -> bool:
  """Whether score `name` needs the model and a batch."""
  return _SCORES.info(name, field="pai.methods")["data"]


def get(name: str, *, field: str = "pruning.score") -> ScoreFn:
  """The (params, key) function of a params-only score (IMP's scores).

  Raises:
    LotteryError: for an unknown name, or a score that needs the model and
      data (use `compute` for those).
  """
  fn = _SCORES.get(name, field=field)
  if _SCORES.info(name)["data"]:
    raise LotteryError(f"{field}: {name!r} needs the model and a batch, "
                       f"a score for pruning at initialization (pai.methods); "
                       f"scores of weights alone are {names()} (got "
                       f"{name!r})")
  return fn


def compute(name: str, apply_fn: ApplyFn, params: Any, mask: Any,
            batch: tuple[jax.Array, jax.Array], key: jax.Array) -> Any:
  """Scores of `params` under `mask` by the score registered as `name`.

  Traceable (jit, vmap, fori_loop); `name` and `apply_fn` are static.

  Args:
    name: a registered score ('snip', 'grasp', 'synflow', 'magnitude',
      'random', or a user's own).
    apply_fn: (params, x) -> logits, the model in evaluation mode. For a
      model of this framework: `lambda p, x: model.apply({'params': p,
      **model_state}, x)` (see `lottery.step.flax_apply`, train=False).
    params: the weights (pruned ones are zeroed here first).
    mask: the mask (None leaves: not prunable); None = all kept.
    batch: (x, y) with integer labels y; synflow reads only x's shape.
    key: randomness of random scores.

  Returns:
    A pytree of float arrays with `params`' structure; higher = keep.
  """
  fn = _SCORES.get(name, field="pai.methods")
  params = masks_lib.apply_mask(mask, params)
  if _SCORES.info(name)["data"]:
    return fn(apply_fn, params, mask, batch, key)
  return fn(params, key)


@register("magnitude")
def magnitude(params, key=None):
  """|w|: the score of magnitude pruning (Frankle & Carbin 2019)."""
  del key
  return jax.tree.map(jnp.abs, params)


@register("random")
def random(params, key):
  """Uniform random scores: random pruning, seeded by `key`.

  One draw of all the scores at once, cut into the leaves (in tree order):
  one random-number program however many leaves the model has, which keeps
  its compile time short (22 separate draws for ResNet-20 took 10 s to
  compile on the CPU).
  """
  leaves, treedef = jax.tree.flatten(params)
  sizes = [int(np.size(p)) for p in leaves]
  flat = jax.random.uniform(key, (sum(sizes),))
  out, start = [], 0
  for p, n in zip(leaves, sizes):
    out.append(flat[start:start + n].reshape(jnp.shape(p)))
    start += n
  return jax.tree.unflatten(treedef, out)


def draw_batch(x: np.ndarray, y: np.ndarray, n: int, key: jax.Array, *,
               field: str) -> tuple[np.ndarray, np.ndarray]:
  """The batch a data-aware score sees: `n` of the examples (x, y) drawn
  uniformly without replacement with `key`, in their order.

  Raises:
    LotteryError: naming `field`, if `n` exceeds the examples.
  """
  if n > len(y):
    raise LotteryError(f"{field}: {n} exceeds the {len(y)} training "
                       f"examples (got {n})")
  idx = np.sort(np.asarray(jax.random.choice(key, len(y), (n,),
                                             replace=False)))
  return x[idx], y[idx]


def _loss(apply_fn: ApplyFn, params, batch, temperature: float = 1.0):
  """Mean softmax cross-entropy of the batch (logits / temperature)."""
  x, y = batch
  logits = apply_fn(params, x) / temperature
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.asarray(y, jnp.int32)).mean()


@register("snip", data=True)
def snip(apply_fn: ApplyFn, params, mask, batch, key):
  """SNIP (Lee et al. 2019): connection sensitivity |dL/dw * w| on the batch.

  The gradient with respect to a multiplicative mask c at c = 1 is
  dL/dw * w; its magnitude is the score. Synaptic-Flow's normalisation by the
  scores' sum is left out: it scales every score alike and changes no mask.
  """
  del mask, key
  grads = jax.grad(lambda p: _loss(apply_fn, p, batch))(params)
  return jax.tree.map(lambda g, w: jnp.abs(g * w), grads, params)


def taylor_terms(apply_fn: ApplyFn, params, batch):
  """g * w, signed: the first-order Taylor terms of the loss on the batch.

  Not a score of the registry (a signed per-weight term ranks nothing
  useful alone): the 'taylor' group criterion (`lottery.structure`) sums
  them over a unit and takes |.|, Molchanov et al. 2019's group criterion.
  `params` as the network is pruned (masked).
  """
  grads = jax.grad(lambda p: _loss(apply_fn, p, batch))(params)
  return jax.tree.map(lambda g, w: g * w, grads, params)


def for_criterion(criterion: str, apply_fn: ApplyFn, params: Any, mask: Any,
                  batch: tuple[jax.Array, jax.Array]) -> Any:
  """What the group criterion `criterion` (`lottery.structure.CRITERIA`)
  reads, as the `scores` of `lottery.prune`: for 'taylor' the signed g * w
  of the masked network on `batch` (`taylor_terms`), for 'bn_scale' the
  masked params' magnitudes (its BatchNorm scales among them). Traceable."""
  params = masks_lib.apply_mask(mask, params)
  if criterion == "taylor":
    return taylor_terms(apply_fn, params, batch)
  return magnitude(params)


@register("grasp", data=True)
def grasp(apply_fn: ApplyFn, params, mask, batch, key):
  """GraSP (Wang et al. 2020): w * (H g), a Hessian-gradient product.

  g = dL/dw with the logits divided by the temperature 200 (the authors'
  code), taken as a constant (stop_gradient); Hg = d(g . dL/dw)/dw is a
  forward-over-reverse product (`jax.jvp` of `jax.grad`). The paper scores
  S(-w) = -w * Hg and removes the weights with the HIGHEST S (those whose
  removal reduces gradient flow least). Here the score is w * Hg = -S:
  pruning removes the lowest, i.e. the paper's highest, so the masks are the
  paper's (the same sign as Synaptic-Flow's `GraSP.score`). Scores are
  signed: no absolute value, as in the paper. The normalisation by |sum| of
  the authors' code is left out (a positive scale changes no mask).

  g and the product are over the prunable weights that are kept, as in the
  authors' code (`GraSP.py`: the conv and linear weights) and Synaptic-
  Flow's (the masked parameters, whose pruned entries have zero gradient):
  g is zero on non-prunable parameters (biases, BatchNorm) and on pruned
  weights, so Hg has no terms through them.
  """
  del key
  grad_fn = jax.grad(
      lambda p: _loss(apply_fn, p, batch, GRASP_TEMPERATURE))
  g = lax.stop_gradient(grad_fn(params))
  if mask is not None:
    g = jax.tree.map(
        lambda m, v: jnp.zeros_like(v) if m is None else jnp.where(m, v, 0),
        mask, g, is_leaf=lambda v: v is None)
  _, hg = jax.jvp(grad_fn, (params,), (g,))
  return jax.tree.map(lambda w, h: w * h, params, hg)


def _synflow_flow(apply_fn: ApplyFn, params, x_shape, mask, *,
                  rescale: bool):
  """(R, scores) of SynFlow; with `rescale`, each prunable kernel is divided
  by a power of two near its gain (see `synflow`)."""
  abs_params = jax.tree.map(jnp.abs, params)
  scale = jax.tree.map(lambda _: jnp.float32(1), params)
  if rescale:
    def gain(w, m):
      if m is None or jnp.ndim(w) < 2:
        return jnp.float32(1)
      # The factor an all-positive input grows by: the mean, over output
      # units, of the sum of |w| over the inputs; rounded to a power of two
      # so that dividing by it is exact.
      g = jnp.sum(w, axis=tuple(range(jnp.ndim(w) - 1))).mean()
      return jnp.exp2(jnp.round(jnp.log2(jnp.maximum(g, 1e-30))))
    leaves, treedef = jax.tree.flatten(abs_params)
    kept = ([True] * len(leaves) if mask is None else
            jax.tree.flatten(mask, is_leaf=lambda v: v is None)[0])
    scale = jax.tree.unflatten(treedef, [
        gain(w, m) for w, m in zip(leaves, kept)])
    abs_params = jax.tree.map(lambda w, s: w / s, abs_params, scale)
  ones = jnp.ones((1, *x_shape[1:]), jnp.float32)
  r, grads = jax.value_and_grad(
      lambda p: jnp.sum(apply_fn(p, ones)))(abs_params)
  scores = jax.tree.map(lambda g, w: jnp.abs(g * w), grads, abs_params)
  return r, scores


@register("synflow", data=True)
def synflow(apply_fn: ApplyFn, params, mask, batch, key):
  """SynFlow (Tanaka et al. 2020): |w * dR/dw|, data-free.

  Every weight is replaced by |w|, the input by an all-ones example of the
  batch's shape, and R is the sum of the network's outputs. The model runs
  in evaluation mode, as Synaptic-Flow's prune loop does (`model.eval()`):
  BatchNorm is then an affine map by its running statistics. That code also
  takes |.| of the statistics; at initialization (mean 0, variance 1, and
  pruning at init never trains) they are already non-negative, so `apply_fn`
  with the model's own state is the same network.

  Overflow: R is the product of the layers' gains (for He init roughly
  sqrt(fan_in) per layer), which can pass float32's 3e38 in deep wide nets.
  R is first computed as it is; only if it is not finite is it computed again
  with each prunable kernel of rank >= 2 divided by a power of two near its
  gain (mean over output units of the sum of |w| over inputs). On a
  bias-free network that multiplies every score by the same power of two,
  exactly (float scaling by 2^k is exact), so the masks are unchanged; with
  biases (and BatchNorm shifts) the biases then weigh relatively more: an
  approximation, used only where float32 could not represent R at all.
  Without float64 and without it, a bias-free net keeps every layer's scores
  summing to R (conservation, Tanaka et al. Theorem 1).
  """
  del key
  x_shape = jnp.shape(batch[0])
  r, scores = _synflow_flow(apply_fn, params, x_shape, mask, rescale=False)
  return lax.cond(
      jnp.isfinite(r) & _all_finite(scores), lambda: scores,
      lambda: _synflow_flow(apply_fn, params, x_shape, mask, rescale=True)[1])


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves]))
