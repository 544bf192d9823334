r"""Start-up and per-run overhead: a tiny run against a bare import.

  python -m experiments.overhead [--repeats=3] [--nolenet] [--notorch]

Every figure is the wall time of a fresh subprocess (`sys.executable`, run in
this checkout's root), the median of `--repeats`; beside each `<name>_s` is
`<name>_cpu_s`, its user + system CPU time (steadier than wall time when
other processes share the cores):

  bare_import_s     `import jax, flax, optax, orbax.checkpoint`
  run_10_steps_s    `python -m experiments.imp --config=mnist1d:quick
                    --config.training.steps=10 --config.pruning.rounds=0
                    --config.training.eval_every=10 --workdir=<new dir>`,
                    warm: after one untimed run, so the MNIST-1D cache and the
                    compilation cache exist
  ratio             run_10_steps_s / bare_import_s (target: <= 2.5);
                    cpu_ratio the same of CPU times

With --lenet (the default), OpenLTH's LeNet-300-100 lottery job: 3 levels
(round 0 and 2 pruning rounds) x 938 steps, batch 64, Adam 1.2e-3, layerwise
magnitude pruning of 20% of the hidden layers' kernels and 10% of the output
kernel per level, rewind to initialization, one test evaluation per level, no
controls; on MNIST-shaped synthetic data (60000 + 10000 examples of 28 x 28 x
1 in [0, 1], 10 classes) saved as an .npz (`data.name=npz`):

  lenet_job_s       the job through `python -m experiments.imp` (warm)
  torch_lenet_job_s the same job as a plain PyTorch script (TORCH_JOB below,
                    `--torch_threads` threads: default torch's own), or null
                    if `torch` is not importable (or --notorch); the two
                    jobs' `--lenet_repeats` runs alternate
  torch_vs_lottery  torch_lenet_job_s / lenet_job_s (target: >= 2);
                    torch_vs_lottery_cpu the same of CPU times

With --seeds, the default recipe (configs/mnist1d.py) for --seeds_rounds
rounds, three seeds (warm, alternating, median of --repeats each):

  seeds_3_one_command_s  one command, --config.seeds.num=3
  seeds_3_separate_s     three commands, seeds 0, 1, 2 (init, data and
                         control seeds i), one after another: their sum
  seeds_one_vs_separate  seeds_3_one_command_s / seeds_3_separate_s (target:
                         <= 0.9)

The last line printed is a JSON object with these keys, whether the
persistent compilation cache was on (`compile_cache`), and the versions.
The runs use the user's caches ($LOTTERY_CACHE or ~/.cache/lottery), as a
user's runs would; LOTTERY_NO_COMPILE_CACHE=1 measures without the
compilation cache.
"""

from __future__ import annotations

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
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

ROOT = pathlib.Path(__file__).resolve().parent.parent

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per figure.")
_LENET = flags.DEFINE_bool("lenet", True, "Time the LeNet-300-100 job.")
_TORCH = flags.DEFINE_bool("torch", True, "Time the PyTorch LeNet job too "
                           "(if torch is importable).")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "torch.set_num_threads for the PyTorch job (0: "
    "torch's default, one thread per core, as a user's script runs).")
_SEEDS = flags.DEFINE_bool(
    "seeds", False, "Time three seeds of the default recipe (a few rounds): "
    "one command with --config.seeds.num=3 against three single-seed "
    "commands one after another.")
_SEEDS_ROUNDS = flags.DEFINE_integer("seeds_rounds", 3,
                                     "Rounds of the --seeds runs.")
_LENET_REPEATS = flags.DEFINE_integer("lenet_repeats", 1,
                                      "Timed runs of each LeNet job.")

BARE_IMPORT = "import jax, flax, optax, orbax.checkpoint"
RUN_10_STEPS = ("--config=mnist1d:quick", "--config.training.steps=10",
                "--config.pruning.rounds=0", "--config.training.eval_every=10")
LENET_LEVELS, LENET_STEPS, LENET_BATCH = 3, 938, 64


def lenet_flags(npz: str) -> tuple[str, ...]:
  """The overrides that make configs/lenet_mnist.py OpenLTH's LeNet job."""
  return ("--config=lenet_mnist", "--config.data.name=npz",
          f"--config.data.path={npz}", "--config.data.validation_size=0",
          f"--config.training.steps={LENET_STEPS}",
          f"--config.training.batch_size={LENET_BATCH}",
          f"--config.training.eval_every={LENET_STEPS}",
          f"--config.pruning.rounds={LENET_LEVELS - 1}",
          "--config.controls=()")


# OpenLTH's lottery job in plain PyTorch: what a user would write by hand.
TORCH_JOB = r'''
import json
import sys
import time

import numpy as np
import torch
from torch import nn


def prune(layers, masks, rates):
  """Layerwise magnitude pruning of `rate` of each layer's surviving weights."""
  for layer, mask, rate in zip(layers, masks, rates):
    w = layer.weight.detach().abs()
    alive = w[mask.bool()]
    k = int(round(rate * alive.numel()))
    if k:
      threshold = torch.kthvalue(alive, k).values
      mask.mul_((w > threshold).float())


def main(path, levels, steps, batch, threads):
  if threads:
    torch.set_num_threads(threads)
  # XLA flushes denormals on the CPU; without this, steps slow down ~20x once
  # the loss and Adam's moments get tiny.
  torch.set_flush_denormal(True)
  torch.manual_seed(0)
  with np.load(path) as d:
    x = torch.from_numpy(d["x_train"].reshape(len(d["x_train"]), -1))
    y = torch.from_numpy(d["y_train"].astype(np.int64))
    xt = torch.from_numpy(d["x_test"].reshape(len(d["x_test"]), -1))
    yt = torch.from_numpy(d["y_test"].astype(np.int64))
  model = nn.Sequential(nn.Linear(x.shape[1], 300), nn.ReLU(),
                        nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
  init = {k: v.clone() for k, v in model.state_dict().items()}
  layers = [model[0], model[2], model[4]]
  rates = [0.2, 0.2, 0.1]
  masks = [torch.ones_like(layer.weight) for layer in layers]
  per_epoch = len(x) // batch
  for level in range(levels):
    t0 = time.time()
    if level:
      prune(layers, masks, rates)
      model.load_state_dict(init)  # Rewind to initialization.
    with torch.no_grad():
      for layer, mask in zip(layers, masks):
        layer.weight.mul_(mask)
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    gen = torch.Generator().manual_seed(level)
    model.train()
    for s in range(steps):
      if s % per_epoch == 0:
        perm = torch.randperm(len(x), generator=gen)
      i = perm[(s % per_epoch) * batch:(s % per_epoch + 1) * batch]
      loss = nn.functional.cross_entropy(model(x[i]), y[i])
      opt.zero_grad()
      loss.backward()
      for layer, mask in zip(layers, masks):
        layer.weight.grad.mul_(mask)
      opt.step()
      with torch.no_grad():
        for layer, mask in zip(layers, masks):
          layer.weight.mul_(mask)
    model.eval()
    with torch.no_grad():
      acc = (model(xt).argmax(1) == yt).float().mean().item()
    kept = sum(m.sum().item() for m in masks)
    total = sum(m.numel() for m in masks)
    print(json.dumps({"level": level, "density": kept / total,
                      "test_accuracy": acc, "time_s": time.time() - t0}))


if __name__ == "__main__":
  main(sys.argv[1], *map(int, sys.argv[2:6]))
'''


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
  return (round(statistics.median(w for w, _ in runs), 3),
          round(statistics.median(c for _, c in runs), 3))


def imp_argv(flags_: Sequence[str], workdir: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "experiments.imp", *flags_,
          f"--workdir={workdir}"]


def write_mnist_like(path: pathlib.Path, seed: int = 0) -> None:
  """60000 + 10000 examples of 28 x 28 x 1 floats in [0, 1], 10 classes:
  a faint prototype per class in strong noise, so that the job learns but,
  as on MNIST, its loss stays well above 0."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  protos = rng.random((10, 28, 28, 1), dtype=np.float32)

  def split(n):
    y = rng.integers(0, 10, n).astype(np.int32)
    x = 0.3 + 0.1 * protos[y] + rng.normal(0, 0.4, (n, 28, 28, 1)).astype(
        np.float32)
    return np.clip(x, 0, 1, out=x), y

  x_train, y_train = split(60_000)
  x_test, y_test = split(10_000)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test,
           y_test=y_test)


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


def measure(repeats: int = 3, lenet: bool = True, torch: bool = True,
            lenet_repeats: int = 1, torch_threads: int = 0) -> dict:
  """The figures of this module's docstring, as a dict; each `<name>_s` has
  its CPU time beside it as `<name>_cpu_s`."""
  out = {}

  def record(name, make_argv, n):
    out[f"{name}_s"], out[f"{name}_cpu_s"] = median_time(make_argv, n,
                                                         warm=True)

  with tempfile.TemporaryDirectory(prefix="lottery_overhead_") as tmp:
    tmp = pathlib.Path(tmp)
    record("bare_import", lambda i: [sys.executable, "-c", BARE_IMPORT],
           repeats)
    record("run_10_steps", lambda i: imp_argv(RUN_10_STEPS, tmp / f"r10_{i}"),
           repeats)
    out["ratio"] = round(out["run_10_steps_s"] / out["bare_import_s"], 2)
    out["cpu_ratio"] = round(
        out["run_10_steps_cpu_s"] / out["bare_import_cpu_s"], 2)
    if lenet:
      npz = tmp / "mnist_like.npz"
      write_mnist_like(npz)
      ours = lambda i: imp_argv(lenet_flags(str(npz)), tmp / f"lenet_{i}")
      out.update(torch_lenet_job_s=None, torch_lenet_job_cpu_s=None,
                 torch_vs_lottery=None)
      if not (torch and importlib.util.find_spec("torch") is not None):
        record("lenet_job", ours, lenet_repeats)
        return out
      script = tmp / "torch_lenet.py"
      script.write_text(TORCH_JOB)
      theirs = [sys.executable, str(script), str(npz), str(LENET_LEVELS),
                str(LENET_STEPS), str(LENET_BATCH), str(torch_threads)]
      # Alternating, after one untimed run of each: a change of the
      # machine's load hits both alike.
      timed_run(ours(-1))
      timed_run(theirs)
      runs = {"lenet_job": [], "torch_lenet_job": []}
      for i in range(lenet_repeats):
        runs["lenet_job"].append(timed_run(ours(i)))
        runs["torch_lenet_job"].append(timed_run(theirs))
      for name, rs in runs.items():
        out[f"{name}_s"] = round(statistics.median(w for w, _ in rs), 3)
        out[f"{name}_cpu_s"] = round(statistics.median(c for _, c in rs), 3)
      out["torch_vs_lottery"] = round(
          out["torch_lenet_job_s"] / out["lenet_job_s"], 2)
      out["torch_vs_lottery_cpu"] = round(
          out["torch_lenet_job_cpu_s"] / out["lenet_job_cpu_s"], 2)
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
  result = measure(_REPEATS.value, _LENET.value, _TORCH.value,
                   _LENET_REPEATS.value, _TORCH_THREADS.value)
  if _SEEDS.value:
    result.update(measure_seeds(_REPEATS.value, _SEEDS_ROUNDS.value))
  result["compile_cache"] = os.environ.get("LOTTERY_NO_COMPILE_CACHE",
                                           "") in ("", "0")
  result.update(repeats=_REPEATS.value, torch_threads=_TORCH_THREADS.value,
                **_versions())
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
