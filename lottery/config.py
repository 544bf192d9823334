"""The config schema: every field with its default, and its validation.

This module defines the shared blocks every method reads (method, seeds, data,
model, training); the modules of the methods register their own blocks with
`register_block` when imported (lottery.imp: pruning, controls,
controls_every; lottery.pai: pai; lottery.sparse: sparse; lottery.stability:
stability). It imports none of the library at its top: rules that need a
registry import it when they run.

Recipe files in configs/ start from `base_config()` and change what their
paper changes. `validate` checks every field before any long work and raises a
`LotteryError` naming the field and value.
"""

from __future__ import annotations

import copy
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import ml_collections

from lottery.errors import LotteryError

# The blocks every method reads; a method adds its own (`Method.fields`),
# registered with `register_block` by the module that defines the method.
SHARED = ("method", "seeds", "data", "model", "training")

# Registered blocks: top-level key -> defaults (a dict of fields, or a single
# value), in registration order.
_BLOCKS: dict[str, Any] = {}
# data.image_size's default: ImageNet's 224 x 224 crops.
IMAGE_SIZE = 224

# Fields that only some values of other fields make anything read: {field:
# is_read(c)}, c the flat {'block.field': value} config (tuples may be
# lists). Their rules refuse a value other than the default where nothing
# reads it; a workdir's saved config counts such a value as the default
# (`unread_at_defaults`), so a run written before a rule resumes.
READ_WHEN: dict[str, Callable[[Mapping[str, Any]], bool]] = {}


def read_when(field: str, is_read: Callable[[Mapping[str, Any]], bool]
              ) -> Callable[[Mapping[str, Any]], bool]:
  """Registers `is_read` for `field` (see `READ_WHEN`); returns it."""
  READ_WHEN[field] = is_read
  return is_read


def unread_at_defaults(flat: dict, defaults: Mapping[str, Any]) -> dict:
  """`flat` (a flat config) with each field of `READ_WHEN` that nothing
  reads under its other values set to its default from `defaults`."""
  out = dict(flat)
  for field, is_read in READ_WHEN.items():
    if field in out and field in defaults:
      try:
        read = is_read(out)
      except (KeyError, TypeError):
        continue  # Another method's config: the field is not its own.
      if not read:
        out[field] = defaults[field]
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every field at its default (the tables of docs/config.md)."""
  c = ml_collections.ConfigDict()
  # The method this recipe runs (a plug-in of lottery.method): imp | pai |
  # sparse. `python -m experiments.run` runs any; experiments.imp, .pai and
  # .sparse run their own.
  c.method = "imp"
  # Separate seeds: weight init, data order, and the randomness of controls
  # and random scores. Keys are derived with fold_in, never reused.
  # seeds.num replicates train together in one compiled program; replicate i
  # uses init + i, data + i and control + i.
  c.seeds = dict(init=0, data=0, control=0, num=1)

  c.data = dict(
      name="mnist1d",  # mnist1d | npz | mnist | fashion_mnist | cifar10 | ...
      data_dir="",  # TFDS data_dir ('' = TFDS's default).
      path="",  # .npz file for name='npz'.
      # Generated data and stream records ('' = $LOTTERY_CACHE or
      # ~/.cache/lottery).
      cache_dir="",
      # Where training batches come from: 'memory' (the arrays, on the device
      # when they fit) or 'stream' (read per call from the dataset's
      # array_record files in the cache, written on first use; the same
      # batches and the same results bit for bit).
      source="memory",
      # Training examples held out for validation (a fixed subset); with it,
      # metrics include the early-stopping step and its test accuracy.
      validation_size=0,
      # Keep the training set on the accelerator when it fits in half its
      # memory; otherwise (or if False) gather each call's batches on the
      # host. For source='memory'.
      on_device=True,
      # On-device batch augmentation, keyed by (data seed, step): 'none' or
      # 'crop_flip' (CIFAR: 4-pixel padded random crop, horizontal flip).
      augment="none",
      # Host-side decoding and cropping of images of any size, as they are
      # streamed (lottery.images; data.source='stream'): 'none' (the
      # dataset's arrays as they are) or 'inception' (training: random-resized
      # crops and flips; evaluation: center crops), to squares of image_size.
      crop="none",
      image_size=IMAGE_SIZE,
  )
  # Options of models that take them (ResNet depth and width; the ViT's
  # dim, heads, mlp_dim, patch; the ResNets' and VGG's bn_init: BatchNorm
  # scales 'ones', 'uniform' or, ResNets only, 'zero_last'), passed to the
  # model's factory where set; 0 / '' = the model's default.
  c.model = dict(name="mnist1d_mlp", depth=0, width=0, dim=0, heads=0,
                 mlp_dim=0, patch=0, bn_init="")

  c.training = dict(
      steps=1500,  # Steps of one training run (every round and control).
      batch_size=100,
      optimizer="adam",  # sgd | adam | adamw
      learning_rate=2e-2,
      momentum=0.0,  # sgd only.
      nesterov=False,
      weight_decay=0.0,
      # The parameters weight decay applies to: regexes over parameter paths
      # ('fc1/kernel'), as pruning.prunable; ('.*',): every parameter.
      weight_decay_on=(".*",),
      schedule="constant",  # constant | step | cosine
      lr_boundaries=(),  # Steps where 'step' multiplies the rate by lr_decay.
      lr_decay=0.1,
      warmup_steps=0,
      # Label smoothing of the training loss (optax.smooth_labels: targets
      # (1 - a) one-hot + a / classes); evaluation is plain cross-entropy.
      label_smoothing=0.0,
      eval_every=100,  # Steps between test-set evaluations.
      checkpoint_every=500,  # Steps between resumable mid-run checkpoints.
      # How a chunk of steps runs: scan | unroll | python | auto (scan; see
      # lottery.loop).
      loop="auto",
      # How seeds.num > 1 replicates share one program: vmap (the step
      # vmapped) | unroll (the step once per replicate: each its single run
      # bit for bit) | auto (unroll on the CPU with one device, else vmap).
      replicas="auto",
  )
  # The blocks the methods register (lottery.imp: pruning, controls,
  # controls_every; lottery.pai: pai; lottery.sparse: sparse;
  # lottery.stability: stability), in registration order.
  for name, defaults in _BLOCKS.items():
    c[name] = copy.deepcopy(defaults)
  return c


# Bounds. Counts (steps, batch size, rounds, ...) stay below 10**9 so that a
# step or example index, plus an offset, never overflows the int32 counters of
# jax and optax (2**31 - 1 ~ 2.1e9). Seeds are in [0, 2**31): every consumer
# (jax.random.key, numpy) takes them without overflow or wrap-around. Rates
# (learning_rate, lr_decay) are at most 1e3 and weight_decay below 1e3: no
# optimizer here trains at a rate above ~10 (SGD on LeNet/Conv uses 0.1, Adam
# ~1e-3), so three orders of magnitude above that is room for odd
# parametrizations while a typo such as 1e30 (or inf) is refused here instead
# of turning the first step's weights into inf and being reported as a
# diverged run.
MAX_COUNT = 10**9
SEED_LIMIT = 2**31
MAX_REPLICATES = 1024
MAX_RATE = 1e3
LOOPS = ("auto", "scan", "unroll", "python")
REPLICAS = ("auto", "vmap", "unroll")
_AUGMENTS_FALLBACK = ("none", "crop_flip")
CROPS = ("none", "inception")
MAX_IMAGE_SIZE = 4096
# The methods whose data are read through the train loop only (the others
# also read the training arrays: PaI's scoring batch, stability's statistics).
LOOP_ONLY_METHODS = ("imp", "sparse")


def _fail(field: str, value, why: str) -> NoReturn:
  raise LotteryError(f"{field}: {why} (got {value!r})")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(field: str, value, lo: int, hi: int = MAX_COUNT) -> None:
  """An integer in [lo, hi]."""
  if not _is_int(value) or not lo <= value <= hi:
    _fail(field, value, f"must be an integer in [{lo}, {hi}]")


def _real(field: str, value, lo: float, hi: float, *, lo_open: bool,
          hi_open: bool) -> None:
  """A finite real number in the interval given by lo, hi and openness."""
  interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  if not _is_real(value):
    _fail(field, value, f"must be a number in {interval}")
  # Bounded intervals also refuse inf; NaN fails every comparison.
  if not ((value > lo if lo_open else value >= lo) and
          (value < hi if hi_open else value <= hi)):
    _fail(field, value, f"must be in {interval}")


def _choice(field: str, value, known, *, element: bool = False) -> None:
  """`value` one of `known`; `element`: an element of a tuple field (whose
  'a,b' from the command line gets the tuple to write)."""
  known = list(known)
  if not isinstance(value, str) or value not in known:
    parts = value.split(",") if element and isinstance(value, str) else []
    if len(parts) > 1 and all(p.strip() in known for p in parts):
      # 'a,b' from the command line, where a tuple field takes a literal.
      several = ", ".join(repr(p.strip()) for p in parts)
      _fail(field, value, f"must be one of {known}; several are a tuple, "
            f"--config.{field}=\"({several})\"")
    _fail(field, value, f"must be one of {known}")


def _str(field: str, value) -> None:
  if not isinstance(value, str):
    _fail(field, value, "must be a string")


def _bool(field: str, value) -> None:
  if not isinstance(value, bool):
    _fail(field, value, "must be True or False")


# Rules: flattened field -> check(field, value, values), where `values` holds
# every field by its flattened name. `validate` runs them in this table's
# order, so a rule may rely on the fields above it (training.steps before
# training.warmup_steps). tests/test_config.py checks that every field of
# base_config() has one; rules for fields it lacks are skipped.
_Rule = Callable[[str, Any, dict[str, Any]], None]


def _count(lo: int, hi: int = MAX_COUNT) -> _Rule:
  return lambda f, v, c: _int(f, v, lo, hi)


def _one_of(known: Callable[[], Sequence[str]]) -> _Rule:
  return lambda f, v, c: _choice(f, v, known())


def _string(f, v, c) -> None:
  _str(f, v)


def _boolean(f, v, c) -> None:
  _bool(f, v)


def _augment_names() -> Sequence[str]:
  try:
    from lottery import augment  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _AUGMENTS_FALLBACK
  return augment.names()


# The registries of the shared blocks' names, imported when a rule runs: this
# module sits below the library and imports none of it at its top.
def _data_names() -> Sequence[str]:
  from lottery import data  # pylint: disable=g-import-not-at-top
  return data.NAMES


def _data_sources() -> Sequence[str]:
  from lottery import stream  # pylint: disable=g-import-not-at-top
  return stream.SOURCES


def _model_names() -> Sequence[str]:
  from lottery import models  # pylint: disable=g-import-not-at-top
  return models.names()


def _optimizers() -> Sequence[str]:
  from lottery import optim  # pylint: disable=g-import-not-at-top
  return optim.OPTIMIZERS


def _lr_schedules() -> Sequence[str]:
  from lottery import optim  # pylint: disable=g-import-not-at-top
  return optim.SCHEDULES


_path_read = read_when("data.path",
                       lambda c: c["data.name"] in ("npz", "images"))
_image_size_read = read_when("data.image_size",
                             lambda c: c["data.crop"] != "none")
_on_device_read = read_when("data.on_device",
                            lambda c: c["data.source"] == "memory")


def _is_tfds(name: str) -> bool:
  from lottery import data  # pylint: disable=g-import-not-at-top
  return name in data.TFDS_NAMES


_data_dir_read = read_when("data.data_dir",
                           lambda c: _is_tfds(c["data.name"]))


def _data_dir(f, v, c) -> None:
  _str(f, v)
  if v and not _data_dir_read(c):
    _fail(f, v, f"is TFDS's data_dir, and data.name {c['data.name']!r} is "
          f"not a TFDS dataset: leave it ''")


def _data_path(f, v, c) -> None:
  _str(f, v)
  if v and not _path_read(c):
    _fail(f, v, f"is read for data.name 'npz' or 'images', not "
          f"{c['data.name']!r}: leave it ''")
  if c["data.name"] == "npz" and not v:
    _fail(f, v, "set it to an .npz file for data.name='npz'")
  if c["data.name"] == "images" and not v:
    _fail(f, v, "set it to the folder of train.array_record and "
          "test.array_record for data.name='images'")


def _image_size(f, v, c) -> None:
  _int(f, v, 1, MAX_IMAGE_SIZE)
  if v != IMAGE_SIZE and not _image_size_read(c):
    _fail(f, v, "is the side of the crops of data.crop='inception', and "
          "data.crop is 'none'")


def _on_device(f, v, c) -> None:
  _bool(f, v)
  if not v and not _on_device_read(c):
    _fail(f, v, "places an in-memory training set (data.source='memory'); "
          "streamed batches go to the devices as they are read")


def _crop(f, v, c) -> None:
  _choice(f, v, CROPS)
  if v == "none":
    return
  if c["data.source"] != "stream":
    _fail(f, v, "decodes and crops batches on the host as they are "
          "streamed; set data.source='stream'")
  if c["data.name"] in ("mnist1d", "npz"):
    _fail(f, v, f"crops images of a TFDS dataset or data.name='images', not "
          f"data.name={c['data.name']!r}")
  if c.get("method") not in LOOP_ONLY_METHODS:
    _fail(f, v, f"is for methods {list(LOOP_ONLY_METHODS)}, which read "
          f"their data through the train loop only (method "
          f"{c.get('method')!r})")
  if "stability_copy" in (c.get("controls") or ()) or c.get(
      "pruning.level_barrier"):
    _fail(f, v, "the error barriers of IMP's stability_copy control and "
          "pruning.level_barrier evaluate the training and test arrays, "
          "which cropped images are not held as; remove them")


def _below_steps(f, v, c) -> None:
  _int(f, v, 0)
  steps = c["training.steps"]
  if v >= steps:
    _fail(f, v, f"must be below training.steps={steps}")


def _learning_rate(f, v, c) -> None:
  _real(f, v, 0, MAX_RATE, lo_open=True, hi_open=False)


def _below_one(f, v, c) -> None:
  """A number in [0, 1) (momentum, label smoothing)."""
  _real(f, v, 0, 1, lo_open=False, hi_open=True)


def _weight_decay(f, v, c) -> None:
  _real(f, v, 0, MAX_RATE, lo_open=False, hi_open=True)


_weight_decay_on_read = read_when("training.weight_decay_on",
                                  lambda c: c["training.weight_decay"] != 0)


def _read_only(rule: _Rule, default: Any, is_read, why: str) -> _Rule:
  """`rule`, and a value other than `default` refused where `is_read` says
  nothing reads the field (`why`: what reads it)."""
  def check(f, v, c) -> None:
    rule(f, v, c)
    value = tuple(v) if isinstance(v, list) else v  # JSON's lists
    if value != default and not is_read(c):
      _fail(f, v, why.format(**{k.replace(".", "_"): x
                                for k, x in c.items()}))
  return check


_sgd_read = read_when("training.momentum",
                      lambda c: c["training.optimizer"] == "sgd")
_nesterov_read = read_when(
    "training.nesterov",
    lambda c: c["training.optimizer"] == "sgd" and c["training.momentum"] > 0)
_step_read = lambda c: c["training.schedule"] == "step"
read_when("training.lr_boundaries", _step_read)
read_when("training.lr_decay", _step_read)


def _patterns(f, v, c=None) -> None:
  """A non-empty tuple of valid regexes over parameter paths."""
  del c
  if not isinstance(v, (tuple, list)) or not v or \
      not all(isinstance(p, str) and p for p in v):
    _fail(f, v, "must be a non-empty tuple of regexes, e.g. ('.*kernel',)")
  from lottery import masks  # pylint: disable=g-import-not-at-top
  masks.compile_patterns(v, f)


def _weight_decay_on(f, v, c) -> None:
  _patterns(f, v)
  if tuple(v) != (".*",) and not _weight_decay_on_read(c):
    _fail(f, v, "is read with training.weight_decay > 0, and it is 0")


def _bn_init(f, v, c) -> None:
  from lottery.models import resnet  # pylint: disable=g-import-not-at-top
  if v != "":
    _choice(f, v, resnet.BN_INITS)


def _lr_boundaries(f, v, c) -> None:
  steps = c["training.steps"]
  b = list(v) if isinstance(v, (tuple, list)) else None
  if b is None or any(not _is_int(x) or not 0 < x < steps for x in b) or \
      b != sorted(set(b)):
    _fail(f, v, f"must be increasing integer steps in (0, {steps})")


def _fraction(f, v, c) -> None:
  _real(f, v, 0, 1, lo_open=True, hi_open=True)


def _distinct_tuple(f, v, what: str) -> list:
  if not isinstance(v, (tuple, list)):
    _fail(f, v, f"must be a tuple of {what}")
  if len(set(v)) != len(v):
    _fail(f, v, f"must not repeat {what}")
  return list(v)


def _names_tuple(f, v, known, example) -> tuple:
  """A non-empty tuple of distinct names from `known` (a lone name is
  allowed where `example` says so)."""
  if isinstance(v, str) and example is None:
    v = (v,)
  if not isinstance(v, (tuple, list)) or not v:
    _fail(f, v, f"must be a non-empty tuple, e.g. {example or (known[0],)!r}")
  for x in v:
    _choice(f, x, known, element=True)
  if len(set(v)) != len(v):
    _fail(f, v, "must not repeat a name")
  return tuple(v)


def _seeds_num(f, v, c) -> None:
  _int(f, v, 1, MAX_REPLICATES)
  top = max(c[f"seeds.{k}"] for k in ("init", "data", "control")) + v - 1
  if top >= SEED_LIMIT:
    _fail(f, v, f"takes seeds up to {top}, past the limit {SEED_LIMIT - 1}")


def check_copy_seeds(field: str, value, config) -> None:
  """Refuses, naming `field` and `value`, a stability pair's copies whose
  data seeds (copy 1 of replicate i takes seeds.data + seeds.num + i) pass
  the seed limit. `config` maps 'seeds.data' and 'seeds.num' to ints."""
  top = config["seeds.data"] + 2 * config["seeds.num"] - 1
  if top >= SEED_LIMIT:
    _fail(field, value, f"the copies take data seeds up to {top} (seeds.data"
          f" + 2 x seeds.num - 1), past the limit {SEED_LIMIT - 1}")


def _method_names() -> Sequence[str]:
  from lottery import method  # pylint: disable=g-import-not-at-top
  import lottery  # pylint: disable=g-import-not-at-top,unused-import  (registers the methods)
  return method.names()


RULES: dict[str, _Rule] = {
    "method": _one_of(_method_names),
    "seeds.init": _count(0, SEED_LIMIT - 1),
    "seeds.data": _count(0, SEED_LIMIT - 1),
    "seeds.control": _count(0, SEED_LIMIT - 1),
    "seeds.num": _seeds_num,
    "data.name": _one_of(_data_names),
    "data.data_dir": _data_dir,
    "data.path": _data_path,
    "data.cache_dir": _string,
    "data.source": _one_of(_data_sources),
    "data.validation_size": _count(0),
    "data.on_device": _on_device,
    "data.augment": _one_of(_augment_names),
    "data.crop": _crop,
    "data.image_size": _image_size,
    "model.name": _one_of(_model_names),
    "model.depth": _count(0),
    "model.width": _count(0),
    "model.dim": _count(0),
    "model.heads": _count(0),
    "model.mlp_dim": _count(0),
    "model.patch": _count(0),
    "model.bn_init": _bn_init,
    "training.steps": _count(1),
    "training.batch_size": _count(1),
    "training.optimizer": _one_of(_optimizers),
    "training.learning_rate": _learning_rate,
    "training.momentum": _read_only(
        _below_one, 0.0, _sgd_read, "is SGD's, and training.optimizer is "
        "{training_optimizer!r}"),
    "training.nesterov": _read_only(
        _boolean, False, _nesterov_read, "is SGD's with training.momentum > "
        "0 (training.optimizer {training_optimizer!r}, momentum "
        "{training_momentum:g})"),
    "training.weight_decay": _weight_decay,
    "training.weight_decay_on": _weight_decay_on,
    "training.schedule": _one_of(_lr_schedules),
    "training.lr_boundaries": _read_only(
        _lr_boundaries, (), _step_read, "is read by training.schedule='step', "
        "and it is {training_schedule!r}"),
    "training.lr_decay": _read_only(
        _learning_rate, 0.1, _step_read, "is read by training.schedule="
        "'step', and it is {training_schedule!r}"),
    "training.warmup_steps": _below_steps,
    "training.label_smoothing": _below_one,
    "training.eval_every": _count(1),
    "training.checkpoint_every": _count(0),
    "training.loop": _one_of(lambda: LOOPS),
    "training.replicas": _one_of(lambda: REPLICAS),
}


# The toolkit of the rules of registered blocks (lottery.imp, lottery.pai,
# ...): each raises a LotteryError naming the field and value.
fail = _fail
is_int = _is_int
check_int = _int
check_real = _real
check_choice = _choice
check_patterns = _patterns
check_str = _str
check_bool = _bool
count = _count
one_of = _one_of
string = _string
boolean = _boolean
fraction = _fraction
below_steps = _below_steps
distinct_tuple = _distinct_tuple
names_tuple = _names_tuple


# The module that registered each block: the framework's own are not
# replaced by another module's.
_OWNERS: dict[str, str] = {}


def register_block(name: str, defaults: Any, rules: Mapping[str, _Rule],
                   help: Mapping[str, str]) -> None:  # pylint: disable=redefined-builtin
  """Adds the top-level block `name` to the schema (`base_config()`).

  Args:
    name: the block's key ('pai'); not a shared block's.
    defaults: its fields and their defaults (a dict), or the default of a
      block that is a single field (`controls_every=1`).
    rules: flattened field ('pai.methods', or 'controls' for a single field)
      -> check(field, value, values), run by `validate` after the shared
      blocks' and the blocks registered before.
    help: flattened field -> one line for --help.

  A block registered again (a notebook cell run twice) is replaced: its
  defaults, rules and help lines are the new ones; a block of the
  framework's own modules is not replaced by another module's.

  Raises:
    LotteryError: for a name that is not an identifier, is a shared block's
      or another module's block of the framework, or a rule or help line of
      a field outside the block.
  """
  if not isinstance(name, str) or not name.isidentifier() or name in SHARED:
    raise LotteryError(f"config: cannot register block {name!r}: it must be "
                       f"an identifier other than the shared blocks' "
                       f"{list(SHARED)}")
  inside = lambda field: field == name or field.startswith(name + ".")
  for field in (*rules, *help):
    if not inside(field):
      raise LotteryError(f"config: block {name!r} cannot register field "
                         f"{field!r}, which is outside it")
  owner = sys._getframe(1).f_globals.get("__name__", "")  # pylint: disable=protected-access
  if _OWNERS.get(name, owner) != owner and _OWNERS[name].startswith(
      "lottery."):
    raise LotteryError(f"config: cannot register block {name!r}: it is "
                       f"{_OWNERS[name]}'s; choose another name")
  _OWNERS[name] = owner
  for table in (RULES, FIELD_HELP):
    for field in [f for f in table if inside(f)]:
      del table[field]
  _BLOCKS[name] = copy.deepcopy(dict(defaults) if isinstance(defaults, Mapping)
                                else defaults)
  RULES.update(rules)
  FIELD_HELP.update(help)


def registered_blocks() -> list[str]:
  """The registered blocks' names, in registration order."""
  return list(_BLOCKS)


# Names that moved to the module of the block they belong to; kept here for
# code that reads them from lottery.config.
_MOVED = {
    "SCHEDULES": ("imp", "SCHEDULES"),
    "CONTROLS": ("imp", "DEFAULT_CONTROLS"),
    "RESETS": ("imp", "RESET_NAMES"),
    "PAI_CHECKS": ("pai", "CHECKS"),
    "MAX_PAI_ITERATIONS": ("pai", "MAX_ITERATIONS"),
    "parse_method_iterations": ("pai", "parse_method_iterations"),
    "SPARSE_METHODS": ("sparse", "METHODS"),
}


def __getattr__(name: str):
  if name in _MOVED:
    import importlib  # pylint: disable=g-import-not-at-top
    module, attr = _MOVED[name]
    return getattr(importlib.import_module(f"lottery.{module}"), attr)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_dict(node) -> dict | None:
  if isinstance(node, (ml_collections.ConfigDict,
                       ml_collections.FrozenConfigDict)):
    return node.to_dict()
  return dict(node) if isinstance(node, Mapping) else None


def _leaves(schema: dict, config: dict, prefix: str,
            out: dict[str, Any]) -> None:
  """Flattens `config` along `schema`, refusing unknown and missing fields."""
  for key in config:
    if key not in schema:
      _unknown(prefix + str(key))
  for key, sub in schema.items():
    name = prefix + key
    if key not in config:
      raise LotteryError(f"{name}: missing from the config (start from "
                         f"lottery.base_config(), which has every field)")
    value = config[key]
    if isinstance(sub, dict):
      value = _as_dict(value)
      if value is None:
        _fail(name, config[key], "must be a group of fields")
      _leaves(sub, value, name + ".", out)
    else:
      out[name] = value


def suggest(name: str, known: Sequence[str]) -> str | None:
  """The field of `known` a mistyped `name` most likely meant, or None.

  An abbreviation such as 'lr' or 'wd' is its words' initials (difflib
  alone would rank 'training.loop' above 'training.learning_rate' for
  'training.lr'); otherwise the closest spelling."""
  leaf = name.rpartition(".")[2]
  guess = [k for k in known if len(leaf) > 1 and
           "".join(w[0] for w in k.rpartition(".")[2].split("_")) == leaf and
           k.rpartition(".")[0] == name.rpartition(".")[0]]
  guess = guess or difflib.get_close_matches(name, list(known), n=1)
  return guess[0] if guess else None


def _unknown(name: str):
  known = schema_fields()
  known += sorted({k.rpartition(".")[0] for k in known} - {""})  # Groups.
  guess = suggest(name, known)
  hint = f" (did you mean {guess!r}?)" if guess else ""
  if not guess and name.partition(".")[0] not in known:
    # A block a plug-in registers (config.register_block) when imported.
    hint = (" (a block of your own? import the module that registers it "
            "first)")
  raise LotteryError(f"config: no field {name!r}{hint}")


def schema_fields() -> list[str]:
  """Every field of `base_config()`, flattened ('training.steps'), in order."""
  out: dict[str, Any] = {}
  _leaves(base_config().to_dict(), base_config().to_dict(), "", out)
  return list(out)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field of `config` against `base_config()`'s schema.

  Raises:
    LotteryError: on the first unknown field ('config: no field ...'), missing
      field, value of a wrong type or out of its bounds (named by its field,
      e.g. 'training.learning_rate: ...').
  """
  config_dict = _as_dict(config)
  if config_dict is None:
    _fail("config", config, "must be a ConfigDict from lottery.base_config()")
  values: dict[str, Any] = {}
  _leaves(base_config().to_dict(), config_dict, "", values)
  # In the table's order, so that a rule may rely on the fields before it. A
  # schema field without a rule fails tests/test_config.py.
  for name, rule in RULES.items():
    if name in values:
      rule(name, values[name], values)

# One line per field for --help (tests/test_config.py checks every field has one).
FIELD_HELP: dict[str, str] = {
    "method": "the method plug-in that runs this config (imp, pai, sparse, stability)",
    "seeds.init": "seed of the weights' initialization (replicate i: init + i)",
    "seeds.data": "seed of the batch order, augmentation and dropout (replicate i: data + i)",
    "seeds.control": "seed of controls, random scores and random masks (replicate i: control + i)",
    "seeds.num": "replicates trained together in one compiled program",
    "data.name": "dataset: mnist1d (generated offline), npz, or a TFDS name",
    "data.data_dir": "TFDS data_dir ('' = TFDS's default)",
    "data.path": "the .npz file for data.name='npz'",
    "data.cache_dir": "cache of generated data and stream records ('' = $LOTTERY_CACHE or ~/.cache/lottery)",
    "data.source": "training batches from memory, or streamed from array_record files (memory | stream)",
    "data.validation_size": "training examples held out for validation (early stopping)",
    "data.on_device": "keep the training set on the accelerator when it fits in half its memory (source='memory')",
    "data.augment": "on-device batch augmentation keyed by (data seed, step)",
    "data.crop": "host-side crops of streamed images: none | inception (random-resized, flip; center)",
    "data.image_size": "side of the square crops of data.crop='inception' (224 for ImageNet)",
    "model.name": "the model, by its registered name",
    "model.depth": "depth of models that take one (ResNet); 0 = the model's default",
    "model.width": "width of models that take one; 0 = the model's default",
    "model.dim": "token width of models that take one (ViT); 0 = the model's default",
    "model.heads": "attention heads per block (ViT); 0 = the model's default",
    "model.mlp_dim": "hidden units of each block's MLP (ViT); 0 = the model's default",
    "model.patch": "patch size (ViT: samples of a sequence, pixels of an image side); 0 = default",
    "model.bn_init": "BatchNorm scale init (ResNets, VGG): ones, uniform, zero_last (ResNets)",
    "training.steps": "steps of one training run (every round, control and group)",
    "training.batch_size": "examples per step",
    "training.optimizer": "the optax optimizer, wrapped in keep_pruned",
    "training.learning_rate": "the peak learning rate",
    "training.momentum": "SGD's momentum",
    "training.nesterov": "SGD with Nesterov momentum",
    "training.weight_decay": "L2 added to the gradient (sgd, adam) or decoupled weight decay (adamw)",
    "training.weight_decay_on": "regexes of the parameters decayed, as pruning.prunable; ('.*',): all",
    "training.schedule": "learning-rate schedule",
    "training.lr_boundaries": "steps where the 'step' schedule multiplies the rate by lr_decay",
    "training.lr_decay": "the 'step' schedule's factor at each boundary",
    "training.warmup_steps": "steps of linear warm-up from 0",
    "training.label_smoothing": "label smoothing of the training loss, in [0, 1); the evaluation loss stays plain cross-entropy",
    "training.eval_every": "steps between test-set evaluations",
    "training.checkpoint_every": "steps between resumable mid-run checkpoints",
    "training.loop": "how a chunk of steps runs (auto: scan)",
    "training.replicas": "how replicates share one program (unroll: each its single run's bits; auto: unroll on one CPU)",
}


def _flat(config) -> dict[str, Any]:
  out: dict[str, Any] = {}
  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[prefix + k] = v
  walk(_as_dict(config), "")
  return out


def _owns(fields: Sequence[str], name: str) -> bool:
  """Whether the field `name` is one of `fields` (blocks or fields)."""
  return any(name == f or name.startswith(f + ".") for f in fields)


def method_fields(fields: Sequence[str]) -> list[str]:
  """Every field of the schema a method with `fields` reads (the shared
  blocks and its own), flattened, in the schema's order."""
  return [n for n in schema_fields() if _owns((*SHARED, *fields), n)]


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every field of `base_config()`: the fields it lacks (a
  config.json holds only its method's) take their defaults.

  Raises:
    LotteryError: for a field the schema does not know (with the nearest
      name), or a value where a block belongs.
  """
  given = _as_dict(config)
  if given is None:
    _fail("config", config, "must be a ConfigDict from lottery.base_config()")
  full = base_config()

  def merge(node, values: dict, prefix: str) -> None:
    for key, value in values.items():
      name = prefix + key
      if key not in node:
        _unknown(name)
      if isinstance(node[key], ml_collections.ConfigDict):
        sub = _as_dict(value)
        if sub is None:
          _fail(name, value, "must be a group of fields")
        merge(node[key], sub, name + ".")
      else:
        with node.ignore_type():
          node[key] = value

  merge(full, given, "")
  return full


def for_method(config: ml_collections.ConfigDict, method: str,
               fields: Sequence[str]) -> ml_collections.ConfigDict:
  """The fields of `config` that method `method` reads (the shared blocks
  and `fields`): what its workdir's config.json and --help show.

  Raises:
    LotteryError: naming the first field of another method set to
      something other than its default (it would be silently ignored).
  """
  values, defaults = _flat(config), _flat(base_config())
  for name, value in values.items():
    if not _owns((*SHARED, *fields), name) and name in defaults and \
        _json(value) != _json(defaults[name]):
      _fail(name, value, f"is not a field of method {method!r}, which reads "
            f"{', '.join(fields)} beside the shared blocks; remove it or set "
            f"method")
  out = ml_collections.ConfigDict()
  full = _as_dict(config)
  for name in method_fields(fields):
    *parents, leaf = name.split(".")
    node, src = out, full
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node, src = node[p], src[p]
    node[leaf] = src[leaf]
  return out


def _json(value):
  return list(value) if isinstance(value, (tuple, list)) else value
