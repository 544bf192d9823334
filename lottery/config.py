"""The config schema: every field with its default, and its validation.

Recipe files in configs/ start from `base_config()` and change what their
paper changes. `validate` checks every field before any long work and raises a
`LotteryError` naming the field and value.
"""

from __future__ import annotations

import ml_collections

from lottery import data as data_lib
from lottery import masks
from lottery import models
from lottery import optim
from lottery import pruning
from lottery import scores
from lottery.errors import LotteryError

RESETS = ("rewind", "lr_rewind", "finetune")
CONTROLS = ("reinit", "random_prune")


def base_config() -> ml_collections.ConfigDict:
  """All fields, with the defaults of the MNIST-1D experiment."""
  c = ml_collections.ConfigDict()
  # Separate seeds: weight init, data order, and the randomness of controls
  # and random scores. Keys are derived with fold_in, never reused.
  c.seeds = dict(init=0, data=0, control=0)

  c.data = dict(
      name="mnist1d",  # mnist1d | npz | mnist | fashion_mnist | cifar10 | ...
      data_dir="",  # TFDS data_dir ('' = TFDS's default).
      path="",  # .npz file for name='npz'.
      cache_dir="",  # MNIST-1D cache ('' = $LOTTERY_CACHE or ~/.cache/lottery).
      # Training examples held out for validation (a fixed subset); with it,
      # metrics include the early-stopping step and its test accuracy.
      validation_size=0,
      # Keep the training set on the accelerator when it fits in half its
      # memory; otherwise (or if False) gather each call's batches on the host.
      on_device=True,
      # On-device batch augmentation, keyed by (data seed, step): 'none' or
      # 'crop_flip' (CIFAR: 4-pixel padded random crop, horizontal flip).
      augment="none",
  )
  # Options of models that take them (ResNet depth and width); 0 = the
  # model's default.
  c.model = dict(name="mnist1d_mlp", depth=0, width=0)

  c.training = dict(
      steps=1500,  # Steps of one training run (every round and control).
      batch_size=100,
      optimizer="adam",  # sgd | adam | adamw
      learning_rate=2e-2,
      momentum=0.0,  # sgd only.
      nesterov=False,
      weight_decay=0.0,
      schedule="constant",  # constant | step | cosine
      lr_boundaries=(),  # Steps where 'step' multiplies the rate by lr_decay.
      lr_decay=0.1,
      warmup_steps=0,
      eval_every=100,  # Steps between test-set evaluations.
      checkpoint_every=500,  # Steps between resumable mid-run checkpoints.
      # How a chunk of steps runs: scan | unroll | python | auto (python for
      # models with convolutions on the CPU, scan elsewhere).
      loop="auto",
  )

  c.pruning = dict(
      fraction=0.2,  # Fraction of surviving prunable weights removed per round.
      rounds=10,  # Pruning rounds after the dense round 0.
      scope="layerwise",  # layerwise | global
      prunable=(".*kernel",),  # Regexes (re.fullmatch) over 'fc1/kernel'.
      layer_fractions="",  # Overrides 'regex=rate,...', e.g. 'out/kernel=0.1'.
      score="magnitude",
      # rewind: weights back to step rewind_step of round 0, train the rest;
      # lr_rewind: keep trained weights, replay the whole schedule;
      # finetune: keep trained weights, train all steps at the final rate.
      reset="rewind",
      rewind_step=0,
  )
  # Controls run every pruned round beside the ticket: 'reinit' (same mask,
  # fresh weights) and 'random_prune' (same per-layer densities, random
  # positions, the ticket's starting weights).
  c.controls = CONTROLS
  c.controls_every = 1  # Run the controls on every N-th round and the last.
  return c


def _fail(field: str, value, why: str):
  raise LotteryError(f"{field}: {why} (got {value!r})")


def _int(field: str, value, lo: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < lo:
    _fail(field, value, f"must be an integer >= {lo}")


def _choice(field: str, value, known) -> None:
  if value not in known:
    _fail(field, value, f"must be one of {list(known)}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises LotteryError on the first invalid field."""
  for k in ("init", "data", "control"):
    _int(f"seeds.{k}", config.seeds[k], 0)
  _choice("data.name", config.data.name, data_lib.NAMES)
  _int("data.validation_size", config.data.validation_size, 0)
  _choice("model.name", config.model.name, models.names())

  t = config.training
  _int("training.steps", t.steps, 1)
  _int("training.batch_size", t.batch_size, 1)
  _choice("training.optimizer", t.optimizer, optim.OPTIMIZERS)
  _choice("training.schedule", t.schedule, optim.SCHEDULES)
  if not t.learning_rate > 0:
    _fail("training.learning_rate", t.learning_rate, "must be > 0")
  if not 0 <= t.momentum < 1:
    _fail("training.momentum", t.momentum, "must be in [0, 1)")
  if not t.weight_decay >= 0:
    _fail("training.weight_decay", t.weight_decay, "must be >= 0")
  if not t.lr_decay > 0:
    _fail("training.lr_decay", t.lr_decay, "must be > 0")
  b = list(t.lr_boundaries)
  if any(not isinstance(x, int) or not 0 < x < t.steps for x in b) or \
      b != sorted(set(b)):
    _fail("training.lr_boundaries", t.lr_boundaries,
          f"must be increasing integer steps in (0, {t.steps})")
  _int("training.warmup_steps", t.warmup_steps, 0)
  if t.warmup_steps >= t.steps:
    _fail("training.warmup_steps", t.warmup_steps,
          f"must be below training.steps={t.steps}")
  _int("training.eval_every", t.eval_every, 1)
  _int("training.checkpoint_every", t.checkpoint_every, 0)

  p = config.pruning
  if not isinstance(p.fraction, (int, float)) or not 0 < p.fraction < 1:
    _fail("pruning.fraction", p.fraction, "must be in (0, 1)")
  _int("pruning.rounds", p.rounds, 0)
  _choice("pruning.scope", p.scope, pruning.SCOPES)
  _choice("pruning.score", p.score, scores.names())
  _choice("pruning.reset", p.reset, RESETS)
  _int("pruning.rewind_step", p.rewind_step, 0)
  if p.rewind_step >= t.steps:
    _fail("pruning.rewind_step", p.rewind_step,
          f"must be below training.steps={t.steps}")
  if p.rewind_step and p.reset != "rewind":
    _fail("pruning.rewind_step", p.rewind_step,
          f"only applies to pruning.reset='rewind', not {p.reset!r}")
  if isinstance(p.prunable, str) or not p.prunable:
    _fail("pruning.prunable", p.prunable, "must be a non-empty tuple of regexes")
  masks.compile_patterns(p.prunable, "pruning.prunable")
  pruning.parse_layer_fractions(p.layer_fractions)
  if isinstance(config.controls, str):
    _fail("controls", config.controls, "must be a tuple, e.g. ('reinit',)")
  for c in config.controls:
    _choice("controls", c, CONTROLS)
  _int("controls_every", config.controls_every, 1)
