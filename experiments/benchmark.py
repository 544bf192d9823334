r"""Throughput of the framework's train loop: masked against dense, loop forms.

  python -m experiments.benchmark [--steps=200] [--repeats=10] \
      [--models=lenet,conv2,resnet20]

For each model, on synthetic data of its dataset's shape (the inputs' values
do not change the arithmetic), the framework's own loop (`lottery.loop.Loop`
with the form 'auto' picks for this platform) runs `--steps` steps per timed
call:
  masked  a 50%-density mask on every kernel, through `keep_pruned`;
  dense   an all-None mask (no masking ops at all).
For Conv-2 and 'cnn1d' (the MNIST-1D CNN: 1-D convolutions, batch 100) two
more variants show why 'auto' picks its form:
  python_loop  the same masked step, `jax.jit`-ed and called once per step
               from a plain Python loop (what a user would write);
  scan         the masked step in a rolled `lax.scan`.
Timings alternate between variants so that machine noise hits all alike;
each figure is the median over repeats. The last line printed is a JSON
object: `<model>_<variant>_steps_per_s` and the ratios (targets: masked >=
0.95 x dense for LeNet, >= 0.9 x for Conv-2 and ResNet-20; the framework's
loop at least as fast as the Python loop). LeNet's keys keep their first
names: masked_steps_per_s, dense_steps_per_s, ratio. 'seeds' times LeNet with
1 and 8 replicates stacked in one program (`seeds_1_steps_per_s`,
`seeds_8_steps_per_s`: replicate-steps per second; `seeds_8_vs_1`), the 8 in
the form the loop picks (`seeds_replicas`: `lottery.loop.replica_form`) and
in each form (`seeds_8_unroll_steps_per_s`, `seeds_8_vmap_steps_per_s`,
`seeds_8_unroll_vs_vmap`); 'resnet20_seeds' the same with ResNet-20 and 1
and 2 replicates (a 40th of --steps a call). With
LeNet, sparse training too: static_steps_per_s (a fixed 90%-sparse mask) and
rigl_steps_per_s (RigL updating it every 100 steps inside the compiled loop),
rigl_vs_static (target >= 0.85). 'stability' times the instability
analysis's two costs with LeNet-300-100 (`lottery.stability`): the error and
loss at 30 points of a linear path, in one compiled program with the
model's input layer computed once per end (`stability.linear_input`), against
30 separately compiled-once evaluations of the interpolated networks
(path_30_vs_separate, target <= 0.5), and a pair of copies trained as 2
replicates of one program against two single trainings (pair_vs_two,
target <= 0.8 on the CPU), and the same in a child process whose CPU is split
into 2 host devices, one copy on each (pair_vs_two_host_devices,
`experiments.benchmark_pair`); and the same path of ResNet-20, whose BatchNorm
statistics are recomputed at every point in both forms, one point a step
(resnet20_path_30_vs_separate, on --resnet_path_examples inputs; path_batch
and resnet20_path_batch: the points vmapped together). 'stream'
times MNIST-1D's train loop (`lottery.loop.train`, `--steps` steps a call, a
test evaluation every 100) with batches read from array_record files
(data.source='stream') against the arrays on the device: stream_memory_steps_per_s, stream_stream_steps_per_s,
stream_vs_memory (target >= 0.9). 'shrink' (not in the default list: VGG-16
at batch 256 takes minutes on a CPU) measures parameters, FLOPs and latency of
dense, masked and shrunk networks under structured pruning
(`experiments.benchmark_shrink`; target speedup_vs_flops >= 0.6). 'crops'
(not in the default list) times the host-side decoding and cropping of
data.crop='inception' (`lottery.images`): --crop_images JPEGs of 500x375 (an
ImageNet-sized smooth pattern plus noise) read as 224x224 training crops and
as evaluation crops (alternating, median of --repeats):
crops_train_images_per_s, crops_eval_images_per_s, crops_threads, crops_size (224),
crops_jpeg_bytes (their mean size);
and training crops with 1 and 2 reader threads (crops_train_threads_1_...,
crops_train_threads_2_images_per_s), the rate of one core
(crops_per_core_images_per_s: one thread's) and the cores that would feed
an accelerator's ResNet-50 at 3,000 images/s
(crops_cores_for_accelerator; the figure's source is in
experiments/benchmark_crops.py). 'rss' (not in the default list: minutes)
measures the peak host memory of short training runs, each in a fresh
process, on datasets at 1x and 4x their size (`experiments.benchmark_stream`):
JPEGs streamed with host-side crops (rss_images_stream_4x_vs_1x, target <=
1.1) and, for contrast, arrays in memory and streamed
(rss_arrays_memory_4x_vs_1x, rss_arrays_stream_4x_vs_1x), with each run's
peak (rss_*_mb) and each dataset's size on disk (rss_*_dataset_mb); its
runs are of 20 steps in one chunk, and a streamed run's peak grows with its
chunks' length (docs/performance.md). 'rss_growth' (not in the default list)
reads the resident memory after every 100-step chunk of one --steps run of
LeNet-300-100 on the 1x arrays per source (rss_growth_memory_mb,
rss_growth_stream_mb, and each run's peak: rss_growth_*_peak_mb).
'torch' times ResNet-20's train step
(batch 128, 32x32x3, SGD momentum, masked) in the framework's loop against a
plain PyTorch eager script of the same network and step, alternating:
resnet20_ours_steps_per_s, resnet20_torch_steps_per_s, resnet20_vs_torch
(target >= 1 on the CPU); the torch keys are null when torch is not
importable.
"""

import json
import os
import pathlib
import platform
import time

from absl import app
from absl import flags
import jax
import numpy as np
import optax

from experiments import benchmark_crops
from experiments import benchmark_pair
from experiments import benchmark_shrink
from experiments import benchmark_stream
from experiments import timing
from lottery import config as config_lib
from lottery import loop
from lottery import masks
from lottery import models
from lottery import optim
from lottery import pruning
from lottery import rng as rng_lib
from lottery import scores
from lottery import stability
from lottery import step

_STEPS = flags.DEFINE_integer("steps", 200, "Steps per timed call (LeNet; "
                              "Conv-2 and ResNet-20 take a fifth of it).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per variant.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 32, "Side of the Conv-2 and ResNet-20 inputs (32: CIFAR; "
    "smaller only to smoke-test the script).")
_MODELS = flags.DEFINE_list("models", ["lenet", "conv2", "cnn1d", "resnet20",
                                      "seeds",
                                      "resnet20_seeds", "stability", "stream",
                                      "torch"],
                            "What to time: lenet, conv2, cnn1d, resnet20, "
                            "seeds "
                            "(LeNet replicates, seeds.num = 1 and 8), "
                            "resnet20_seeds (1 and 2), "
                            "stability (LeNet and ResNet-20 paths, LeNet "
                            "pair), stream (MNIST-1D batches streamed vs in "
                            "memory), torch (ResNet-20 against PyTorch "
                            "eager); also shrink, crops (host-side JPEG "
                            "crops), rss (peak host memory at 1x and 4x "
                            "the data), rss_growth (host memory after each "
                            "chunk of a --steps run).")
_CROP_IMAGES = flags.DEFINE_integer(
    "crop_images", 256, "JPEGs decoded and cropped per timed call ('crops').")
_EVAL_EXAMPLES = flags.DEFINE_integer(
    "eval_examples", 10_000, "Examples of the path evaluation ('stability').")
_RESNET_PATH_EXAMPLES = flags.DEFINE_integer(
    "resnet_path_examples", 512, "Examples of ResNet-20's path evaluation "
    "and statistics ('stability').")

# name -> (registered model, input shape, batch size, optimizer, rate, steps
# divisor)
SETUPS = {
    "lenet": ("lenet_300_100", (28, 28, 1), 60, "adam", 1.2e-3, 1),
    "conv2": ("conv2", (32, 32, 3), 60, "adam", 2e-4, 5),
    # 1-D convolutions: the MNIST-1D CNN as configs/mnist1d.py:cnn trains it.
    "cnn1d": ("mnist1d_cnn", (40,), 100, "adam", 1e-2, 1),
    "resnet20": ("resnet20", (32, 32, 3), 128, "sgd", 0.1, 5),
}


# The models timed in the loop's forms too (the module doc).
LOOP_FORMS = ("conv2", "cnn1d")

_median_times = timing.median_times


def _cpu_name() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux; `platform.processor()`,
  which is often empty there, elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.partition(":")[2].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _synthetic(model_name: str, shape: tuple, n: int):
  """n random examples of `shape` with labels in [0, 10), the model, its
  params and other variables (init seed 0), and a 50%-density magnitude
  mask: (x, y, model, params, variables, mask)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n,) + shape).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  model = models.get(model_name, 10)
  variables = dict(jax.jit(lambda k: model.init(rng_lib.flat(k), x[:1]))(
      jax.random.key(0)))
  params = variables.pop("params")
  mask = pruning.prune(masks.make_mask(params), scores.magnitude(params), 0.5)
  return x, y, model, params, variables, mask


def _bench(name: str, steps: int, repeats: int) -> dict:
  model_name, shape, batch, opt, lr, div = SETUPS[name]
  if len(shape) == 3 and shape[0] == 32:
    shape = (_IMAGE_SIZE.value, _IMAGE_SIZE.value, shape[2])
  steps = max(1, steps // div)
  t = config_lib.base_config().training
  t.update(optimizer=opt, learning_rate=lr, momentum=0.9 if opt == "sgd"
           else 0.0)
  n = max(10 * batch, 600)
  x, y, model, params, variables, mask = _synthetic(model_name, shape, n)
  no_mask = jax.tree.map(lambda _: None, params)
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  step_fn = step.make_train_step(apply_fn, tx)
  eval_fn = step.make_eval_step(apply_fn)
  form = loop.choose_form("auto", params)
  data = loop.put_data(x, y, x[:100], y[:100])
  idx = loop.batch_indices(n, batch, 0, 0, steps)
  lrs = np.full(steps, lr, np.float32)
  loops = {"masked": loop.Loop(step_fn, eval_fn, form=form)}
  loops["dense"] = loops["masked"]
  masks_of = {"masked": mask, "dense": no_mask}
  if name in LOOP_FORMS:
    loops["scan"] = loop.Loop(step_fn, eval_fn, form="scan")
    masks_of["scan"] = mask
  states = {v: step.init_state(params, tx, mask=masks_of[v],
                               model_state=variables) for v in loops}
  n_steps = {v: steps for v in loops}
  runners = {v: (lambda v=v: loops[v].run(states[v], data, idx[:n_steps[v]],
                                          lrs[:n_steps[v]]))
             for v in loops}
  if name in LOOP_FORMS:
    # A user's loop: the same masked step, jitted, called once per step.
    one = jax.jit(lambda s, xb, yb, lr: step_fn(s, (xb, yb), lr),
                  donate_argnums=0)
    states["python_loop"] = step.init_state(params, tx, mask=mask,
                                            model_state=variables)
    xd, yd = data.x, data.y

    def user_loop():
      s, losses = states["python_loop"], []
      for i in range(steps):
        s, m = one(s, xd[idx[i]], yd[idx[i]], lrs[i])
        losses.append(m["loss"])
      return s, np.asarray(losses)
    runners["python_loop"] = user_loop

  def timed(v):
    start = time.perf_counter()
    states[v], losses = runners[v]()
    jax.block_until_ready(states[v])
    assert np.all(np.isfinite(losses)), (name, v)
    return time.perf_counter() - start

  med = _median_times(timed, runners, repeats)
  n_steps.setdefault("python_loop", steps)
  rate = {v: n_steps[v] / t for v, t in med.items()}
  out = {f"{name}_{v}_steps_per_s": float(f"{r:.4g}") for v, r in rate.items()}
  out[f"{name}_ratio"] = round(rate["masked"] / rate["dense"], 4)
  out[f"{name}_loop"] = form
  if name in LOOP_FORMS:
    out[f"{name}_loop_vs_python_loop"] = round(
        rate["masked"] / rate["python_loop"], 4)
    out[f"{name}_scan_vs_python_loop"] = round(
        rate["scan"] / rate["python_loop"], 4)
  return out


def _torch_resnet20(x: np.ndarray, y: np.ndarray, batch: int, lr: float,
                    momentum: float, weight_decay: float):
  """A plain PyTorch eager script of ResNet-20's train step, as a user
  writes it: the same network (`lottery.models.resnet`: 3x3 stem, 3 stages
  of 3 basic blocks, 1x1 projection shortcuts, BatchNorm), NCHW tensors,
  SGD with momentum and coupled weight decay, torch's default threads,
  denormals flushed (XLA flushes them on the CPU). Returns `run(idx) ->
  losses` for (steps, batch) example indices, or None if torch is not
  importable."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from torch import nn  # pylint: disable=g-import-not-at-top
  fn = torch.nn.functional
  torch.set_flush_denormal(True)
  torch.manual_seed(0)

  def conv_bn(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout))

  class Block(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.a, self.b = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1)
      self.shortcut = (conv_bn(cin, cout, 1, stride)
                       if stride != 1 or cin != cout else nn.Identity())

    def forward(self, h):
      return fn.relu(self.b(fn.relu(self.a(h))) + self.shortcut(h))

  layers, cin = [conv_bn(x.shape[-1], 16, 3, 1), nn.ReLU()], 16
  for s in range(3):
    for b in range(3):
      layers.append(Block(cin, 16 * 2**s, 2 if s and not b else 1))
      cin = 16 * 2**s
  net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(cin, 10))
  opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                        weight_decay=weight_decay)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.from_numpy(y.astype(np.int64))

  def run(idx):
    losses = []
    for rows in idx:
      rows = torch.from_numpy(rows)
      loss = fn.cross_entropy(net(xt[rows]), yt[rows])
      opt.zero_grad()
      loss.backward()
      opt.step()
      losses.append(loss.item())
    return np.asarray(losses)
  return run


def _bench_torch(steps: int, repeats: int) -> dict:
  """ResNet-20's train step (batch 128, 32x32x3, SGD momentum 0.9, weight
  decay 1e-4 as in configs/resnet20_cifar10.py) in the framework's own loop
  (the form 'auto' picks; a 50%-density mask, as IMP trains) against a plain
  PyTorch eager script of the same step (`_torch_resnet20`), alternating.
  Target: resnet20_vs_torch >= 1. Without torch: the framework's rate only,
  the torch keys null."""
  model_name, shape, batch, opt, lr, div = SETUPS["resnet20"]
  shape = (_IMAGE_SIZE.value, _IMAGE_SIZE.value, shape[2])
  steps = max(1, steps // div)
  t = config_lib.base_config().training
  t.update(optimizer=opt, learning_rate=lr, momentum=0.9, weight_decay=1e-4)
  n = 10 * batch
  x, y, model, params, variables, mask = _synthetic(model_name, shape, n)
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  form = loop.choose_form("auto", params)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn), form=form)
  data = loop.put_data(x, y, x[:100], y[:100])
  idx = loop.batch_indices(n, batch, 0, 0, steps)
  lrs = np.full(steps, lr, np.float32)
  state = [step.init_state(params, tx, mask=mask, model_state=variables)]

  def ours():
    state[0], losses = lp.run(state[0], data, idx, lrs)
    jax.block_until_ready(state[0])
    return losses

  runners = {"ours": ours}
  torch_run = _torch_resnet20(x, y, batch, lr, t.momentum, t.weight_decay)
  if torch_run is not None:
    runners["torch"] = lambda: torch_run(idx)

  def timed(v):
    start = time.perf_counter()
    losses = runners[v]()
    assert np.all(np.isfinite(losses)), v
    return time.perf_counter() - start

  rate = {v: steps / t
          for v, t in _median_times(timed, runners, repeats).items()}
  out = {"resnet20_ours_steps_per_s": float(f"{rate['ours']:.4g}"),
         "resnet20_torch_steps_per_s": None, "resnet20_vs_torch": None,
         "resnet20_ours_loop": form}
  if "torch" in rate:
    import torch  # pylint: disable=g-import-not-at-top
    out.update(resnet20_torch_steps_per_s=float(f"{rate['torch']:.4g}"),
               resnet20_vs_torch=round(rate["ours"] / rate["torch"], 4),
               torch=torch.__version__, torch_threads=torch.get_num_threads())
  return out


def _bench_seeds(steps: int, repeats: int, counts=(1, 8), forms=(),
                 spec=benchmark_pair.LENET, prefix="seeds") -> dict:
  """Replicate-steps per second of a network (`spec`; default
  LeNet-300-100, batch 60), masked, with N replicates stacked in one
  compiled program (seeds.num = N), in the replicate form the loop picks and
  in each of `forms`; keys start with `prefix`."""
  rate = benchmark_pair.replicate_rates(steps, repeats, counts, forms=forms,
                                        spec=spec)
  out = {f"{prefix}_{c}_steps_per_s": float(f"{r:.4g}")
         for c, r in rate.items()}
  n = counts[-1]
  out[f"{prefix}_{n}_vs_{counts[0]}"] = round(rate[n] / rate[counts[0]], 4)
  if {"unroll", "vmap"} <= set(forms):
    out[f"{prefix}_{n}_unroll_vs_vmap"] = round(
        rate[f"{n}_unroll"] / rate[f"{n}_vmap"], 4)
  out[f"{prefix}_replicas"] = loop.replica_form()
  return out


def _bench_sparse(steps: int, repeats: int) -> dict:
  """Sparse training on LeNet-300-100, batch 60, 90% sparse (uniform):
  a static mask against RigL updating it every 100 steps inside the loop
  (the steps of both variants go on across calls, so every 100th step of
  each runs RigL's update). Target: rigl >= 0.85 x static."""
  from lottery import distributions  # pylint: disable=g-import-not-at-top
  from lottery import sparse_updates  # pylint: disable=g-import-not-at-top
  model_name, shape, batch, opt, lr, _ = SETUPS["lenet"]
  t = config_lib.base_config().training
  t.update(optimizer=opt, learning_rate=lr)
  rng = np.random.default_rng(0)
  n = max(10 * batch, 600)
  x = rng.normal(size=(n,) + shape).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  model = models.get(model_name, 10)
  params = jax.jit(lambda k: model.init(rng_lib.flat(k), x[:1]))(
      jax.random.key(0))["params"]
  dense = masks.make_mask(params)
  counts = distributions.keep_counts("uniform", dense, 0.1)
  mask = pruning.keep_top(dense, scores.random(dense, jax.random.key(1)),
                          counts)
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  every = 100
  table = sparse_updates.drop_table(counts, sparse_updates.drop_fractions(
      10**6, every, 0.3, 1.0))
  hook = sparse_updates.drop_and_grow("rigl", dense, counts, table, every)
  eval_fn = step.make_eval_step(apply_fn)
  form = loop.choose_form("auto", params)
  loops = {
      "static": loop.Loop(step.make_train_step(apply_fn, tx), eval_fn,
                          form=form),
      "rigl": loop.Loop(step.make_train_step(apply_fn, tx, mask_update=hook,
                                             update_every=every), eval_fn,
                        form=form)}
  data = loop.put_data(x, y, x[:100], y[:100])
  lrs = np.full(steps, lr, np.float32)
  states = {v: step.init_state(params, tx, mask=mask) for v in loops}

  def timed(v):
    start = time.perf_counter()
    s0 = int(states[v].step)
    idx = loop.batch_indices(n, batch, 0, s0, s0 + steps)
    states[v], losses = loops[v].run(states[v], data, idx, lrs)
    jax.block_until_ready(states[v])
    assert np.all(np.isfinite(losses)), v
    return time.perf_counter() - start

  rate = {v: steps / t
          for v, t in _median_times(timed, loops, repeats).items()}
  kept = {k: int(c) for k, (c, _) in masks.counts(states["rigl"].mask).items()}
  assert kept == counts, (kept, counts)  # exact through every update
  return {"static_steps_per_s": float(f"{rate['static']:.4g}"),
          "rigl_steps_per_s": float(f"{rate['rigl']:.4g}"),
          "rigl_vs_static": round(rate["rigl"] / rate["static"], 4),
          "rigl_mask_updates": int(states["rigl"].step) // every}


def path_setup(model_name: str, shape: tuple, examples: int, batch: int
               ) -> dict:
  """A linear path's pieces (no flags: `experiments.repro_path_forms` uses
  it too): `examples` random inputs `x` of `shape` with labels `y`, the
  model, its two initializations (seeds 0, 1) as the ends `a`, `b` with
  their other variables `state`, a 50% magnitude mask of `a`, the apply
  and eval functions, and (for a model with BatchNorm) `stats`, the
  `evaluate_path` arguments that recompute statistics over whole batches of
  `batch`."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(examples,) + tuple(shape)).astype(np.float32)
  y = rng.integers(0, 10, examples).astype(np.int32)
  model = models.get(model_name, 10)
  init = jax.jit(lambda k: model.init(rng_lib.flat(k), x[:1]))
  va, vb = init(jax.random.key(0)), init(jax.random.key(1))
  a, b = va.pop("params"), vb.pop("params")
  state = dict(va)
  apply_fn = step.flax_apply(model)
  stats = {}
  if state:
    stats = dict(apply_fn=apply_fn,
                 stats_x=stability.statistics_batches(x, batch))
  return dict(x=x, y=y, model=model, a=a, b=b, state=state,
              mask=pruning.prune(masks.make_mask(a), scores.magnitude(a),
                                 0.5),
              apply_fn=apply_fn, eval_fn=step.make_eval_step(apply_fn),
              stats=stats)


def _path_timing(name: str, examples: int, repeats: int) -> dict:
  """The 30 points of a path in one program (`stability.evaluate_path`)
  against 30 evaluations compiled once, on `examples` random inputs; a
  model with BatchNorm has its statistics recomputed at every point, over
  the examples' whole batches of its training batch size, in both. The
  path vmaps the points as `stability.path_batch` picks (all of them for
  LeNet, one a step for ResNet-20)."""
  model_name, shape, batch, *_ = SETUPS[name]
  if len(shape) == 3 and shape[0] == 32:
    shape = (_IMAGE_SIZE.value, _IMAGE_SIZE.value, shape[2])
  p = path_setup(model_name, shape, examples, batch)
  x, y, model, a, b, state, mask, apply_fn, eval_fn, stats = (
      p[k] for k in ("x", "y", "model", "a", "b", "state", "mask",
                     "apply_fn", "eval_fn", "stats"))
  points = 30
  alphas = np.linspace(0, 1, points, dtype=np.float32)
  xs, ys, valid = loop.eval_batches(x, y, 1000)

  @jax.jit
  def one(p, q, alpha):
    params = stability.interpolate(p, q, alpha, mask)
    st = state
    if stats:
      st = stability.recompute_statistics(apply_fn, params, state,
                                          stats["stats_x"])
    return eval_fn(params, st, xs, ys, valid)

  per_step = stability.path_batch(eval_fn, a, state, (xs, ys, valid))

  def batched():
    start = time.perf_counter()
    m = stability.evaluate_path(
        eval_fn, a, b, state, mask, x, y, points=points,
        input_layer=stability.input_layer_of(model), batch=per_step, **stats)
    assert len(m["error"]) == points
    return time.perf_counter() - start

  def separate():
    start = time.perf_counter()
    for alpha in alphas:
      jax.block_until_ready(one(a, b, alpha))
    return time.perf_counter() - start

  forms = {"batched": batched, "separate": separate}
  med = _median_times(lambda v: forms[v](), forms, repeats)
  return {"path_30_s": float(f"{med['batched']:.4g}"),
          "separate_30_s": float(f"{med['separate']:.4g}"),
          "path_30_vs_separate": round(med["batched"] / med["separate"], 4),
          "path_examples": examples, "path_batch": per_step or points}


def _bench_stability(steps: int, repeats: int, examples: int) -> dict:
  """The path's 30 points in one program against 30 evaluations (LeNet;
  ResNet-20 with its statistics recomputed, `resnet20_path_*`), and a pair
  of copies as 2 stacked replicates against two single trainings."""
  out = _path_timing("lenet", examples, repeats)
  out.update({f"resnet20_{k}": v for k, v in _path_timing(
      "resnet20", _RESNET_PATH_EXAMPLES.value, repeats).items()})
  seeds = _bench_seeds(steps, repeats, counts=(1, 2))
  # Replicate-steps per second: two trainings of one replicate each take
  # 2 / rate_1 per step, the pair 2 / rate_2.
  out["pair_vs_two"] = round(seeds["seeds_1_steps_per_s"] /
                             seeds["seeds_2_steps_per_s"], 4)
  out.update(benchmark_pair.pair_on_host_devices(steps, repeats))
  return out


def _bench_stream(steps: int, repeats: int) -> dict:
  """MNIST-1D's train loop (`loop.train`: mnist1d_mlp, batch 100, Adam,
  50% magnitude mask, a test evaluation every 100 steps) with its batches
  from the record files (data.source='stream') against the arrays on the
  device ('memory'). Target: stream >= 0.9 x memory."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from lottery import data as data_lib  # pylint: disable=g-import-not-at-top
  from lottery import stream  # pylint: disable=g-import-not-at-top
  ds = data_lib.mnist1d()
  t = config_lib.base_config().training
  model = models.get("mnist1d_mlp", ds.num_classes)
  params = jax.jit(lambda k: model.init(rng_lib.flat(k), ds.x_train[:1]))(
      jax.random.key(0))["params"]
  mask = pruning.prune(masks.make_mask(params), scores.magnitude(params), 0.5)
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn),
                 form=loop.choose_form("auto", params))
  folder = tempfile.TemporaryDirectory()
  records = {}
  for split, x, y in (("train", ds.x_train, ds.y_train),
                      ("test", ds.x_test, ds.y_test)):
    path = pathlib.Path(folder.name) / f"{split}.array_record"
    stream.write_split(path, x, y)
    records[split] = stream.Records(path)
  data = {"memory": loop.put_data(ds.x_train, ds.y_train, ds.x_test,
                                  ds.y_test),
          "stream": loop.stream_data(records["train"], records["test"])}
  states = {v: step.init_state(params, tx, mask=mask) for v in data}
  lr_fn = lambda a, b: np.full(b - a, t.learning_rate, np.float32)

  def timed(v):
    start = time.perf_counter()
    s0 = int(states[v].step)
    states[v], history, _ = loop.train(
        lp, states[v], data[v], stop=s0 + steps, lr_fn=lr_fn,
        batch_size=t.batch_size, data_seed=0, eval_every=min(100, steps))
    jax.block_until_ready(states[v])
    assert np.isfinite(history[-1]["loss"]), v
    return time.perf_counter() - start

  med = _median_times(timed, data, repeats)
  folder.cleanup()
  rate = {v: steps / t for v, t in med.items()}
  # The same batches, so the same weights (bit for bit).
  assert all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(states["memory"].params),
      jax.tree.leaves(states["stream"].params)))
  return {"stream_memory_steps_per_s": float(f"{rate['memory']:.4g}"),
          "stream_stream_steps_per_s": float(f"{rate['stream']:.4g}"),
          "stream_vs_memory": round(rate["stream"] / rate["memory"], 4)}


def main(argv):
  del argv
  result = {}
  for name in _MODELS.value:
    if name == "seeds":
      result.update(_bench_seeds(_STEPS.value, _REPEATS.value,
                                 forms=("unroll", "vmap")))
    elif name == "resnet20_seeds":
      result.update(_bench_seeds(
          max(1, _STEPS.value // 40), _REPEATS.value, counts=(1, 2),
          forms=("unroll", "vmap"), spec=benchmark_pair.RESNET20,
          prefix="resnet20_seeds"))
    elif name == "stability":
      result.update(_bench_stability(_STEPS.value, _REPEATS.value,
                                     _EVAL_EXAMPLES.value))
    elif name == "stream":
      result.update(_bench_stream(_STEPS.value, _REPEATS.value))
    elif name == "crops":
      result.update(benchmark_crops.measure(_CROP_IMAGES.value,
                                            _REPEATS.value))
    elif name == "shrink":
      result.update(benchmark_shrink.measure(repeats=_REPEATS.value))
    elif name == "rss":
      result.update(benchmark_stream.measure())
    elif name == "rss_growth":
      result.update(benchmark_stream.growth(_STEPS.value))
    elif name == "torch":
      result.update(_bench_torch(_STEPS.value, _REPEATS.value))
    elif name not in SETUPS:
      known = list(SETUPS) + ["seeds", "resnet20_seeds", "stability",
                              "stream", "torch",
                              "shrink", "crops", "rss", "rss_growth"]
      raise app.UsageError(f"--models: unknown model {name!r} (known: "
                           f"{known})")
    else:
      result.update(_bench(name, _STEPS.value, _REPEATS.value))
    prefixes = {"stability": ("path", "separate", "pair", "resnet20_path",
                              "resnet20_separate"),
                "torch": ("resnet20_ours", "resnet20_torch",
                          "resnet20_vs_torch", "torch"),
                "shrink": tuple(benchmark_shrink.MODELS)}.get(name, (name,))
    print(json.dumps({k: v for k, v in result.items()
                      if k.startswith(prefixes)}), flush=True)
  if "lenet" in _MODELS.value:
    result.update(_bench_sparse(_STEPS.value, _REPEATS.value))
    print(json.dumps({k: v for k, v in result.items()
                      if k.startswith(("static", "rigl"))}), flush=True)
    # The first benchmark's names, kept for comparisons across versions.
    result.update(masked_steps_per_s=result["lenet_masked_steps_per_s"],
                  dense_steps_per_s=result["lenet_dense_steps_per_s"],
                  ratio=result["lenet_ratio"], model="lenet_300_100",
                  batch_size=SETUPS["lenet"][2])
  result.update(steps_per_call=_STEPS.value, repeats=_REPEATS.value,
                device=str(jax.devices()[0].device_kind),
                image_size=_IMAGE_SIZE.value,
                platform=jax.default_backend(), cpu=_cpu_name(),
                cpu_count=os.cpu_count(),
                jax=jax.__version__, optax=optax.__version__)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
