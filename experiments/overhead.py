r"""Start-up and per-run overhead: a tiny run against a bare import, and
lottery jobs of several lengths against plain PyTorch scripts of them.

  python -m experiments.overhead [--repeats=3] [--jobs=lenet,mnist1d,resnet20]
      [--levels=1,3,10] [--steps=0] [--job_repeats=1] [--nostartup]
      [--notorch] [--torch_threads=0] [--seeds]

Every figure is the wall time of a fresh subprocess (`sys.executable`, run in
this checkout's root); beside each `<name>_s` is `<name>_cpu_s`, its user +
system CPU time (steadier than wall time when other processes share the
cores).

With --startup (the default), the median of `--repeats` runs of each:

  bare_import_s     `import jax, flax, optax, orbax.checkpoint`
  run_10_steps_s    `python -m experiments.imp --config=mnist1d:quick
                    --config.training.steps=10 --config.pruning.rounds=0
                    --config.training.eval_every=10 --workdir=<new dir>`,
                    warm: after one untimed run, so the MNIST-1D cache and the
                    compilation cache exist
  ratio             run_10_steps_s / bare_import_s (target: <= 2.5);
                    cpu_ratio the same of CPU times

Jobs (`--jobs`), each run through `python -m experiments.imp` (warm) and as a
plain PyTorch script of the same job (`torch_script`: the same model, init,
optimizer, batch, steps, pruning, rewinding and test evaluations, on the same
arrays from an .npz; denormals flushed, as XLA does on the CPU;
`--torch_threads` threads, default PyTorch's own: one per core):

  lenet     OpenLTH's LeNet-300-100 lottery job: 938 steps a level, batch 64,
            Adam 1.2e-3, layerwise magnitude pruning of 20% of the hidden
            layers' kernels and 10% of the output kernel per level, rewind to
            initialization, one test evaluation per level, no controls; on
            MNIST-shaped synthetic data (60000 + 10000 examples of 28 x 28 x 1
            in [0, 1], 10 classes) saved as an .npz (`data.name=npz`).
  mnist1d   The default recipe (configs/mnist1d.py): the residual MLP, 1500
            steps a level, batch 100, Adam 2e-2, layerwise pruning of 10% of
            every kernel and bias, rewind to initialization, a test evaluation
            every 100 steps, the reinit and random-pruning controls every 4th
            level and on the last; on the standard MNIST-1D set.
  resnet20  configs/resnet20_cifar10.py:k0 for 2 levels x 200 steps (its
            learning rate is constant 0.1 until step 32000): batch 128, SGD
            with momentum and weight decay, crop-and-flip augmentation,
            global pruning of 20% of the kernels, rewind to initialization, no
            controls; on CIFAR-shaped synthetic data (50000 + 10000 examples
            of 32 x 32 x 3).

lenet and mnist1d run at each of `--levels` levels (level 0 trains the dense
network; a level is one round), resnet20 at 2; `--steps` sets every job's
steps a level (0: the job's own). After one untimed run of each side (ours at
2 levels, so the compilation cache holds the pruning programs too), the runs
alternate ours / PyTorch, length after length, `--job_repeats` times, so a
change of the machine's load hits both sides alike; figures are medians. For
each job and length the JSON's `jobs[<job>]["levels"][<n>]` holds `lottery_s`,
`torch_s` (null without torch, or with --notorch), their CPU times and
`torch_vs_lottery` (torch / ours; target for lenet: >= 2 at every length)
with `torch_vs_lottery_cpu`; with two lengths or more, `per_level` holds the
same of the marginal time of a level, (t(longest) - t(shortest)) / (the
difference in levels): short jobs show start-up, the marginal level the
steady state.

With --seeds, the default recipe (configs/mnist1d.py) for --seeds_rounds
rounds, three seeds (warm, alternating, median of --repeats each):

  seeds_3_one_command_s  one command, --config.seeds.num=3
  seeds_3_separate_s     three commands, seeds 0, 1, 2 (init, data and
                         control seeds i), one after another: their sum
  seeds_one_vs_separate  seeds_3_one_command_s / seeds_3_separate_s (target:
                         <= 0.9)

Each job's rows (one per length) are printed as soon as it is timed; the
last line printed is a JSON object with these keys, whether the persistent
compilation cache was on (`compile_cache`), and the versions. The runs use the
user's caches ($LOTTERY_CACHE or ~/.cache/lottery), as a user's runs would;
LOTTERY_NO_COMPILE_CACHE=1 measures without the compilation cache.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

ROOT = pathlib.Path(__file__).resolve().parent.parent

_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Timed runs of the bare import, the 10-step run and the "
    "--seeds commands.")
_STARTUP = flags.DEFINE_bool(
    "startup", True, "Time the bare import and the warm 10-step run.")
_JOBS = flags.DEFINE_list(
    "jobs", "lenet,mnist1d,resnet20", "Jobs to time against PyTorch "
    "(lenet, mnist1d, resnet20; empty: none).")
_LENET = flags.DEFINE_bool("lenet", True, "--nolenet: leave lenet out of "
                           "--jobs.")
_LEVELS = flags.DEFINE_list(
    "levels", "1,3,10", "Levels of the lenet and mnist1d jobs, one length "
    "after another (resnet20 runs 2).")
_STEPS = flags.DEFINE_integer(
    "steps", 0, "Steps a level of every job (0: the job's own).")
_JOB_REPEATS = flags.DEFINE_integer(
    "job_repeats", 1, "Timed runs of each job and length, each side.")
flags.DEFINE_alias("lenet_repeats", "job_repeats")
_TORCH = flags.DEFINE_bool("torch", True, "Time the PyTorch scripts too "
                           "(if torch is importable).")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "torch.set_num_threads for the PyTorch scripts (0: "
    "torch's default, one thread per core, as a user's script runs).")
_SEEDS = flags.DEFINE_bool(
    "seeds", False, "Time three seeds of the default recipe (a few rounds): "
    "one command with --config.seeds.num=3 against three single-seed "
    "commands one after another.")
_SEEDS_ROUNDS = flags.DEFINE_integer("seeds_rounds", 3,
                                     "Rounds of the --seeds runs.")

BARE_IMPORT = "import jax, flax, optax, orbax.checkpoint"
RUN_10_STEPS = ("--config=mnist1d:quick", "--config.training.steps=10",
                "--config.pruning.rounds=0", "--config.training.eval_every=10")


# A plain PyTorch lottery job, what a user would write by hand: each job's
# script is this prologue and the lines that build its model and call `imp`.
# Run as `python script.py data.npz levels steps batch eval_every threads`;
# prints one JSON line per level.
TORCH_PROLOGUE = r'''
import json
import math
import sys
import time

import numpy as np
import torch
from torch import nn


def load(path):
  """x_train, y_train, x_test, y_test of an .npz (labels as int64)."""
  with np.load(path) as d:
    return [torch.from_numpy(d[k].astype(np.int64) if k[0] == "y" else d[k])
            for k in ("x_train", "y_train", "x_test", "y_test")]


def prune(weights, masks, rates):
  """Magnitude pruning of a fraction of the surviving weights: of each tensor
  on its own (`rates`: one per tensor) or of all together (one number)."""
  if isinstance(rates, float):
    groups = [(weights, masks, rates)]
  else:
    groups = [([w], [m], r) for w, m, r in zip(weights, masks, rates)]
  for ws, ms, rate in groups:
    alive = torch.cat([w.detach().abs()[m.bool()] for w, m in zip(ws, ms)])
    k = math.floor(rate * alive.numel() + 0.5)  # Halves up, as lottery.
    if k:
      threshold = torch.kthvalue(alive, k).values
      for w, m in zip(ws, ms):
        m.mul_((w.detach().abs() > threshold).float())


def evaluate(model, x, y, batch=1000):
  model.eval()
  with torch.no_grad():
    right = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()
                .item() for i in range(0, len(x), batch))
  return right / len(x)


def train(model, weights, masks, opt, data, steps, batch, eval_every, gen,
          augment):
  """`steps` masked steps; the test accuracy every `eval_every` and last."""
  x, y, xt, yt = data
  per_epoch = len(x) // batch
  for s in range(steps):
    model.train()
    if s % per_epoch == 0:
      perm = torch.randperm(len(x), generator=gen)
    i = perm[(s % per_epoch) * batch:(s % per_epoch + 1) * batch]
    xb = augment(x[i], gen) if augment else x[i]
    loss = nn.functional.cross_entropy(model(xb), y[i])
    opt.zero_grad()
    loss.backward()
    for w, m in zip(weights, masks):
      w.grad.mul_(m)
    opt.step()
    with torch.no_grad():
      for w, m in zip(weights, masks):
        w.mul_(m)
    if (s + 1) % eval_every == 0 or s + 1 == steps:
      acc = evaluate(model, xt, yt)
  return acc


def imp(make_model, prunable, rates, make_opt, data, levels, steps, batch,
        eval_every, controls_every=0, augment=None):
  """Iterative magnitude pruning, rewinding to initialization; the reinit and
  random-pruning controls every `controls_every`-th level and on the last."""
  model = make_model()
  init = {k: v.clone() for k, v in model.state_dict().items()}
  weights = prunable(model)
  masks = [torch.ones_like(w) for w in weights]
  gen = torch.Generator().manual_seed(0)
  for level in range(levels):
    t0 = time.time()
    if level:
      prune(weights, masks, rates)
    runs = []
    if controls_every and level and (level % controls_every == 0 or
                                     level == levels - 1):
      shuffled = [m.flatten()[torch.randperm(m.numel(), generator=gen)]
                  .view_as(m) for m in masks]
      runs += [("reinit", make_model().state_dict(), masks),
               ("random_prune", init, shuffled)]
    runs.append(("ticket", init, masks))  # Last: the next level prunes it.
    out = {"level": level, "density": sum(m.sum().item() for m in masks) /
           sum(m.numel() for m in masks)}
    for kind, start, kind_masks in runs:
      model.load_state_dict(start)
      with torch.no_grad():
        for w, m in zip(weights, kind_masks):
          w.mul_(m)
      opt = make_opt(model.parameters())
      out[kind + "_accuracy"] = train(model, weights, kind_masks, opt, data,
                                      steps, batch, eval_every, gen, augment)
    out["time_s"] = time.time() - t0
    print(json.dumps(out), flush=True)


def main(job):
  path, (levels, steps, batch, eval_every, threads) = (
      sys.argv[1], map(int, sys.argv[2:7]))
  if threads:
    torch.set_num_threads(threads)
  # XLA flushes denormals on the CPU; without this, steps slow down ~20x once
  # the loss and Adam's moments get tiny.
  torch.set_flush_denormal(True)
  torch.manual_seed(0)
  job(load(path), levels, steps, batch, eval_every)
'''

TORCH_LENET = TORCH_PROLOGUE + r'''

def lenet():
  model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(),
                        nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
  for layer in model[1::2]:
    nn.init.xavier_normal_(layer.weight)  # Glorot-normal, zero biases.
    nn.init.zeros_(layer.bias)
  return model


def job(data, levels, steps, batch, eval_every):
  imp(lenet, lambda m: [m[1].weight, m[3].weight, m[5].weight],
      [0.2, 0.2, 0.1], lambda p: torch.optim.Adam(p, lr=1.2e-3), data,
      levels, steps, batch, eval_every)


if __name__ == "__main__":
  main(job)
'''

TORCH_MNIST1D = TORCH_PROLOGUE + r'''

class ResidualMLP(nn.Module):
  """40 -> 500, a residual 500 -> 500 block, -> 10; PyTorch's default init."""

  def __init__(self):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(40, 500), nn.Linear(500, 500)
    self.out = nn.Linear(500, 10)

  def forward(self, x):
    h = torch.relu(self.fc1(x))
    return self.out(h + torch.relu(self.fc2(h)))


def job(data, levels, steps, batch, eval_every):
  # Every kernel and bias pruned on its own, 10% a level.
  imp(ResidualMLP, lambda m: list(m.parameters()), [0.1] * 6,
      lambda p: torch.optim.Adam(p, lr=2e-2), data, levels, steps, batch,
      eval_every, controls_every=4)


if __name__ == "__main__":
  main(job)
'''

TORCH_RESNET20 = TORCH_PROLOGUE + r'''

class Block(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet20(width=16):
  layers, cin = [nn.Conv2d(3, width, 3, 1, 1, bias=False),
                 nn.BatchNorm2d(width), nn.ReLU()], width
  for s in range(3):
    for b in range(3):
      layers.append(Block(cin, width * 2**s, 2 if s and not b else 1))
      cin = width * 2**s
  model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(cin, 10))
  for m in kernels(model):
    nn.init.kaiming_normal_(m)
  return model


def kernels(model):
  return [m.weight for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]


def crop_flip(x, gen):
  """Zero-pads 4 pixels, crops back at a random offset, flips half."""
  n, c, h, w = x.shape
  padded = nn.functional.pad(x, (4, 4, 4, 4))
  i, j = torch.randint(0, 9, (2, n, 1), generator=gen)
  rows, cols = i + torch.arange(h), j + torch.arange(w)
  out = padded[torch.arange(n)[:, None, None, None],
               torch.arange(c)[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
  flip = torch.rand(n, generator=gen) < 0.5
  return torch.where(flip[:, None, None, None], out.flip(3), out)


def job(data, levels, steps, batch, eval_every):
  x, y, xt, yt = data  # NHWC as saved; PyTorch's convolutions want NCHW.
  data = [x.permute(0, 3, 1, 2).contiguous(), y,
          xt.permute(0, 3, 1, 2).contiguous(), yt]
  imp(resnet20, kernels, 0.2, lambda p: torch.optim.SGD(
      p, lr=0.1, momentum=0.9, weight_decay=1e-4), data, levels, steps,
      batch, eval_every, augment=crop_flip)


if __name__ == "__main__":
  main(job)
'''


def write_synthetic(path: pathlib.Path, shape: Sequence[int], train: int,
                    test: int, signal: float = 0.1, noise: float = 0.4,
                    seed: int = 0) -> None:
  """`train` + `test` examples of `shape` floats in [0, 1], 10 classes: a
  prototype per class (uniform in [0, `signal`]) in Gaussian noise of std
  `noise`; with the defaults a faint prototype in strong noise, so that a job
  learns but, as on MNIST, its loss stays well above 0."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  protos = rng.random((10, *shape), dtype=np.float32)

  def split(n):
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    x *= noise
    x += 0.3 + signal * protos[y]
    return np.clip(x, 0, 1, out=x), y

  x_train, y_train = split(train)
  x_test, y_test = split(test)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test,
           y_test=y_test)


def write_mnist1d(path: pathlib.Path) -> None:
  """The standard MNIST-1D set that `data.name=mnist1d` reads, as an .npz."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lottery import data  # pylint: disable=g-import-not-at-top
  ds = data.mnist1d()
  np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
           y_test=ds.y_test)


def _npz_flags(npz: str) -> tuple[str, ...]:
  return ("--config.data.name=npz", f"--config.data.path={npz}",
          "--config.data.validation_size=0", "--config.controls=()")


def lenet_flags(npz: str, levels: int = 3, steps: int = 938
                ) -> tuple[str, ...]:
  """The overrides that make configs/lenet_mnist.py OpenLTH's LeNet job."""
  return ("--config=lenet_mnist", *_npz_flags(npz),
          f"--config.training.steps={steps}",
          "--config.training.batch_size=64",
          f"--config.training.eval_every={steps}",
          f"--config.pruning.rounds={levels - 1}")


def mnist1d_flags(npz: str, levels: int = 3, steps: int = 1500
                  ) -> tuple[str, ...]:
  """The default recipe for `levels` levels (it reads its own MNIST-1D set,
  of which `npz` is the PyTorch script's copy)."""
  del npz
  return ("--config=mnist1d", f"--config.training.steps={steps}",
          f"--config.training.eval_every={min(steps, 100)}",
          f"--config.pruning.rounds={levels - 1}")


def resnet20_flags(npz: str, levels: int = 2, steps: int = 200
                   ) -> tuple[str, ...]:
  """configs/resnet20_cifar10.py:k0, `levels` levels of `steps` steps."""
  return ("--config=resnet20_cifar10:k0", *_npz_flags(npz),
          f"--config.training.steps={steps}",
          "--config.training.schedule=constant",
          "--config.training.lr_boundaries=()",
          f"--config.training.eval_every={steps}",
          f"--config.pruning.rounds={levels - 1}")


@dataclasses.dataclass(frozen=True)
class Job:
  """A lottery job and the plain PyTorch script of it.

  Attributes:
    flags: (npz path, levels, steps) -> our launcher's flags.
    torch_script: the PyTorch script's source (TORCH_PROLOGUE + its model).
    write_data: writes the job's arrays to an .npz path.
    steps: steps a level; batch: batch size.
    eval_every: steps between test evaluations (0: once, at a level's end).
    levels: the lengths it runs at (None: --levels).
  """
  flags: Callable[[str, int, int], tuple[str, ...]]
  torch_script: str
  write_data: Callable[[pathlib.Path], None]
  steps: int
  batch: int
  eval_every: int = 0
  levels: tuple[int, ...] | None = None


JOBS = {
    "lenet": Job(lenet_flags, TORCH_LENET, functools.partial(
        write_synthetic, shape=(28, 28, 1), train=60_000, test=10_000),
                 steps=938, batch=64),
    "mnist1d": Job(mnist1d_flags, TORCH_MNIST1D, write_mnist1d, steps=1500,
                   batch=100, eval_every=100),
    "resnet20": Job(resnet20_flags, TORCH_RESNET20, functools.partial(
        write_synthetic, shape=(32, 32, 3), train=50_000, test=10_000),
                    steps=200, batch=128, levels=(2,)),
}


def torch_argv(script: pathlib.Path, npz: pathlib.Path, job: Job,
               levels: int, steps: int, threads: int) -> list[str]:
  """The command that runs a job's PyTorch script."""
  eval_every = min(job.eval_every, steps) if job.eval_every else steps
  return [sys.executable, str(script), str(npz), str(levels), str(steps),
          str(job.batch), str(eval_every), str(threads)]


def _env() -> dict[str, str]:
  # This checkout's packages first, whatever is installed.
  path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                         if p)
  return {**os.environ, "PYTHONPATH": path}


def timed_run(argv: Sequence[str]) -> tuple[float, float]:
  """(wall, CPU) seconds of a fresh `argv` subprocess in ROOT; raises on
  failure. CPU time (user + system, all threads) is less sensitive than wall
  time to other processes sharing the cores."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  res = subprocess.run(list(argv), cwd=ROOT, env=_env(), capture_output=True,
                       text=True, check=False)
  elapsed = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if res.returncode:
    raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: "
                       f"{res.stderr.strip()[-2000:]}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return elapsed, cpu


def median_time(make_argv, repeats: int, warm: bool) -> tuple[float, float]:
  """Median (wall, CPU) seconds of `repeats` runs of make_argv(i), after one
  untimed run of make_argv(-1) if `warm`."""
  if warm:
    timed_run(make_argv(-1))
  runs = [timed_run(make_argv(i)) for i in range(repeats)]
  return _medians(runs)


def _medians(runs: Sequence[tuple[float, float]]) -> tuple[float, float]:
  return (round(statistics.median(w for w, _ in runs), 3),
          round(statistics.median(c for _, c in runs), 3))


def imp_argv(flags_: Sequence[str], workdir: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "experiments.imp", *flags_,
          f"--workdir={workdir}"]


def _ratio(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None else round(a / b, 2)


def _sides(lottery: tuple[float, float],
           torch: tuple[float, float] | None) -> dict:
  """One row: both sides' (wall, CPU) seconds and torch / lottery."""
  t = torch or (None, None)
  return {"lottery_s": lottery[0], "lottery_cpu_s": lottery[1],
          "torch_s": t[0], "torch_cpu_s": t[1],
          "torch_vs_lottery": _ratio(t[0], lottery[0]),
          "torch_vs_lottery_cpu": _ratio(t[1], lottery[1])}


def summarize(runs: dict[str, dict[int, list[tuple[float, float]]]]
              ) -> dict:
  """A job's figures from its runs' (wall, CPU) seconds.

  Args:
    runs: {'lottery': {levels: [(wall, cpu), ...]}, 'torch': the same, or
      empty (not timed)}.

  Returns:
    {'levels': {str(levels): row}, 'per_level': row or None}, a row holding
    `lottery_s`, `lottery_cpu_s`, `torch_s`, `torch_cpu_s` (medians; None
    where torch was not timed), `torch_vs_lottery` and
    `torch_vs_lottery_cpu`. `per_level` is the marginal time of a level,
    (t(longest) - t(shortest)) / (the difference in levels), with two
    lengths or more.
  """
  med = {side: {n: _medians(rs) for n, rs in by_n.items()}
         for side, by_n in runs.items()}
  out = {"levels": {str(n): _sides(m, med["torch"].get(n))
                    for n, m in sorted(med["lottery"].items())},
         "per_level": None}
  if len(med["lottery"]) > 1:
    lo, hi = min(med["lottery"]), max(med["lottery"])

    def marginal(m):
      if hi not in m:
        return None
      return tuple(round((m[hi][k] - m[lo][k]) / (hi - lo), 3) for k in (0, 1))

    out["per_level"] = _sides(marginal(med["lottery"]),
                              marginal(med["torch"]))
  return out


def measure_job(name: str, levels: Sequence[int], steps: int, repeats: int,
                torch: bool, torch_threads: int, tmp: pathlib.Path) -> dict:
  """A job's figures (`summarize`), with its `steps` and `batch`."""
  job = JOBS[name]
  levels = job.levels or tuple(levels)
  steps = steps or job.steps
  npz = tmp / f"{name}.npz"
  job.write_data(npz)
  ours = lambda n, i: imp_argv(job.flags(str(npz), n, steps),
                               tmp / f"{name}_{n}_{i}")
  script = tmp / f"torch_{name}.py"
  script.write_text(job.torch_script)
  theirs = lambda n: torch_argv(script, npz, job, n, steps, torch_threads)
  # One untimed run of each side: caches of data and programs, the OS's file
  # cache. Two levels of ours compile the pruning (and controls') programs.
  timed_run(ours(min(max(levels), 2), -1))
  if torch:
    timed_run(theirs(1))
  runs = {"lottery": {}, "torch": {}}
  for i in range(repeats):
    for n in levels:  # Alternating: a change of load hits both sides.
      runs["lottery"].setdefault(n, []).append(timed_run(ours(n, i)))
      if torch:
        runs["torch"].setdefault(n, []).append(timed_run(theirs(n)))
  return {"steps": steps, "batch": job.batch, **summarize(runs)}


def table(jobs: dict) -> str:
  """One row per job and length (and marginal level), for people."""
  rows = [f"{'job':<9} {'levels':>9} {'lottery_s':>10} {'torch_s':>9} "
          f"{'torch/lottery':>14} {'(CPU time)':>11}"]
  fmt = lambda v, f: "-" if v is None else format(v, f)
  for name, res in jobs.items():
    items = list(res["levels"].items())
    if res["per_level"]:
      items.append(("per level", res["per_level"]))
    for n, r in items:
      rows.append(f"{name:<9} {n:>9} {fmt(r['lottery_s'], '10.2f')} "
                  f"{fmt(r['torch_s'], '9.2f')} "
                  f"{fmt(r['torch_vs_lottery'], '14.2f')} "
                  f"{fmt(r['torch_vs_lottery_cpu'], '11.2f')}")
  return "\n".join(rows)


def seeds_flags(rounds: int, seed: int | None = None) -> tuple[str, ...]:
  """The default recipe for `rounds` rounds: three replicates in one command
  (seed None) or the single run of replicate `seed`."""
  base = (f"--config.pruning.rounds={rounds}",)
  if seed is None:
    return base + ("--config.seeds.num=3",)
  return base + tuple(f"--config.seeds.{k}={seed}"
                      for k in ("init", "data", "control"))


def measure_seeds(repeats: int, rounds: int) -> dict:
  """The --seeds figures: alternating one-command and separate runs."""
  with tempfile.TemporaryDirectory(prefix="lottery_seeds_") as tmp:
    tmp = pathlib.Path(tmp)
    one = lambda i: imp_argv(seeds_flags(rounds), tmp / f"three_{i}")
    single = lambda i, s: imp_argv(seeds_flags(rounds, s), tmp / f"s{s}_{i}")
    timed_run(one(-1))  # Warm: data cache and compilation cache.
    for s in range(3):
      timed_run(single(-1, s))
    ones, separates = [], []
    for i in range(repeats):
      ones.append(timed_run(one(i))[0])
      separates.append(sum(timed_run(single(i, s))[0] for s in range(3)))
  a, b = statistics.median(ones), statistics.median(separates)
  return {"seeds_3_one_command_s": round(a, 3),
          "seeds_3_separate_s": round(b, 3),
          "seeds_one_vs_separate": round(a / b, 3), "seeds_rounds": rounds}


def measure(repeats: int = 3, startup: bool = True,
            jobs: Sequence[str] = tuple(JOBS),
            levels: Sequence[int] = (1, 3, 10), steps: int = 0,
            job_repeats: int = 1, torch: bool = True,
            torch_threads: int = 0,
            report: Callable[[str], None] | None = None) -> dict:
  """The figures of this module's docstring, as a dict; each `<name>_s` has
  its CPU time beside it as `<name>_cpu_s`; the jobs' under 'jobs'. `report`
  gets each job's rows (`table`) as soon as it is timed."""
  out = {}
  torch = torch and importlib.util.find_spec("torch") is not None

  def record(name, make_argv, n):
    out[f"{name}_s"], out[f"{name}_cpu_s"] = median_time(make_argv, n,
                                                         warm=True)

  with tempfile.TemporaryDirectory(prefix="lottery_overhead_") as tmp:
    tmp = pathlib.Path(tmp)
    if startup:
      record("bare_import", lambda i: [sys.executable, "-c", BARE_IMPORT],
             repeats)
      record("run_10_steps",
             lambda i: imp_argv(RUN_10_STEPS, tmp / f"r10_{i}"), repeats)
      out["ratio"] = round(out["run_10_steps_s"] / out["bare_import_s"], 2)
      out["cpu_ratio"] = round(
          out["run_10_steps_cpu_s"] / out["bare_import_cpu_s"], 2)
    for name in jobs:
      res = measure_job(name, levels, steps, job_repeats, torch,
                        torch_threads, tmp)
      out.setdefault("jobs", {})[name] = res
      if report:
        report(table({name: res}))
  return out


def _versions() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  v = {"python": platform.python_version(), "jax": jax.__version__,
       "platform": jax.default_backend(), "cpus": os.cpu_count()}
  if importlib.util.find_spec("torch") is not None:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    v["torch"] = metadata.version("torch")
  return v


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  jobs = [j for j in _JOBS.value if _LENET.value or j != "lenet"]
  unknown = [j for j in jobs if j not in JOBS]
  if unknown:
    raise app.UsageError(f"--jobs: unknown {unknown} (known: {list(JOBS)})")
  try:
    levels = [int(n) for n in _LEVELS.value]
  except ValueError:
    levels = [0]
  if not levels or min(levels) < 1:
    raise app.UsageError(f"--levels: want numbers >= 1 (got "
                         f"{','.join(_LEVELS.value)!r})")
  result = measure(_REPEATS.value, _STARTUP.value, jobs, levels,
                   _STEPS.value, _JOB_REPEATS.value, _TORCH.value,
                   _TORCH_THREADS.value,
                   report=functools.partial(print, flush=True))
  if _SEEDS.value:
    result.update(measure_seeds(_REPEATS.value, _SEEDS_ROUNDS.value))
  result["compile_cache"] = os.environ.get("LOTTERY_NO_COMPILE_CACHE",
                                           "") in ("", "0")
  result.update(repeats=_REPEATS.value, job_repeats=_JOB_REPEATS.value,
                torch_threads=_TORCH_THREADS.value, **_versions())
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
