"""Peak host memory of a training run on a dataset at 1x and 4x its size
(`python -m experiments.benchmark --models=rss`); no flags, so tests import
it beside the other scripts.

Each run is a short IMP training job (`lottery.run`: Conv-2, 32x32 inputs,
`steps` steps of batch 32, round 0 only, a test evaluation at the end) in a
fresh Python process; its peak resident memory is its own VmHWM
(`peak_rss_mb`). Every run takes the same steps (20 by default, in one
chunk: one compiled call), so only what grows with the dataset itself
shows. The figures are for that length: a streamed run's peak also grows
with its chunks' length, up to three calls of `loop.STREAM_CALL_BYTES`
(docs/performance.md); `growth` reads the memory after every chunk of a
longer run:

  images  a data.name='images' folder of 500x375 JPEGs (ImageNet's typical
          size, ~73 KB each), streamed with data.crop='inception'
          (decoded and cropped on the host); the data a run must not hold.
  arrays  an .npz of CIFAR-shaped uint8 arrays (float32 once loaded: 4x the
          file), in memory (data.source='memory': held on the host, the
          contrast) and streamed from the record cache ('stream'; the cache
          is written by an unmeasured run first, which loads the dataset).
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

from experiments import benchmark_crops

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Training examples at 1x (the test split has a twelfth of them); the other
# sizes are multiples.
IMAGES, ARRAYS = 1200, 12_500

# Prepended to a child's code: at exit it writes its peak resident memory
# (VmHWM, kB) to the file $LOTTERY_PEAK_FILE.
_REPORT_PEAK = r"""
import atexit as _atexit, os as _os
def _report_peak(path=_os.environ.pop("LOTTERY_PEAK_FILE")):
  with open("/proc/self/status") as f:
    kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
  with open(path, "w") as f:
    f.write(kb)
_atexit.register(_report_peak)
"""

_CONFIG = r"""
import json, sys
import lottery
c = lottery.base_config()
for key, value in json.loads(sys.argv[1]).items():
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
"""
_RUN = _CONFIG + "lottery.run(c, sys.argv[2], log=lambda _: None)\n"


# A run whose VmRSS (MB) after every compiled chunk is written, as a JSON
# list, to the file argv[3].
_RUN_BY_CHUNK = _CONFIG + r"""
from lottery import progress as progress_lib
def _rss():
  with open("/proc/self/status") as f:
    kb = next(l.split()[1] for l in f if l.startswith("VmRSS:"))
  return int(kb) * 1024 / 1e6
rss = []
class _Hook(progress_lib.NullProgress):
  def job_step(self, step):
    super().job_step(step)
    rss.append(round(_rss()))
lottery.run(c, sys.argv[2], progress=_Hook())
with open(sys.argv[3], "w") as f:
  json.dump(rss, f)
"""


def peak_rss_mb(code: str, *args: str, env: dict | None = None) -> float:
  """Runs `python -c code args...` from the repository root and returns
  its peak resident memory in MB (10^6 bytes): the VmHWM of
  /proc/self/status (Linux), which the child reads as it exits. Not
  `ru_maxrss`: a child's counts the memory of the parent it was forked
  from (its RUSAGE_CHILDREN, the largest of all children's).

  Raises:
    RuntimeError: with the end of its stderr, if it exits non-zero.
  """
  with tempfile.TemporaryDirectory() as tmp:
    peak = pathlib.Path(tmp) / "peak"
    env = {**(os.environ if env is None else env),
           "LOTTERY_PEAK_FILE": str(peak)}
    res = subprocess.run([sys.executable, "-c", _REPORT_PEAK + code, *args],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, check=False)
    if res.returncode:
      raise RuntimeError(res.stderr[-3000:])
    return int(peak.read_text()) * 1024 / 1e6


def _run_mb(folder: pathlib.Path, name: str, config: dict) -> float:
  """Peak MB of `lottery.run` of the base config with `config`'s fields
  set, on a new workdir, with the data cache in `folder`."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "LOTTERY_CACHE": str(folder / "cache")}
  return peak_rss_mb(_RUN, json.dumps(config),
                     str(folder / "workdirs" / name), env=env)


def _job(steps: int, **data) -> dict:
  return {"model.name": "conv2", "controls": [], "pruning.rounds": 0,
          "training.steps": steps, "training.batch_size": 32,
          "training.eval_every": steps, "training.checkpoint_every": steps,
          **{f"data.{k}": v for k, v in data.items()}}


def _write_images(folder: pathlib.Path, train: int, distinct: int = 64):
  """A data.name='images' folder of `train` + train // 12 JPEGs of 500x375
  (`distinct` different ones, repeated), 10 classes."""
  from lottery import images  # pylint: disable=g-import-not-at-top
  gen = np.random.default_rng(0)
  encoded = benchmark_crops.jpegs(distinct)
  for split, n in (("train", train), ("test", max(1, train // 12))):
    images.write(folder, split, (encoded[i % distinct] for i in range(n)),
                 gen.integers(0, 10, n), 10)


def _write_arrays(path: pathlib.Path, train: int):
  """An .npz of `train` + train // 12 random uint8 32x32x3 examples."""
  gen = np.random.default_rng(0)
  test = max(1, train // 12)
  np.savez(path, x_train=gen.integers(0, 256, (train, 32, 32, 3), np.uint8),
           y_train=gen.integers(0, 10, train),
           x_test=gen.integers(0, 256, (test, 32, 32, 3), np.uint8),
           y_test=gen.integers(0, 10, test))


def _size_mb(path: pathlib.Path) -> float:
  files = path.iterdir() if path.is_dir() else [path]
  return round(sum(f.stat().st_size for f in files) / 1e6, 1)


def measure(scales=(1, 4), steps: int = 20, images: int = IMAGES,
            arrays: int = ARRAYS) -> dict:
  """Peak resident MB of each run at each of `scales` x (`images` JPEGs,
  `arrays` examples), each dataset's size on disk, and each variant's
  ratio of its largest to its smallest scale (target for the streamed
  images: at most 1.1)."""
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp)
    for s in scales:
      path = folder / f"images_{s}x"
      _write_images(path, s * images)
      out[f"rss_images_{s}x_dataset_mb"] = _size_mb(path)
      out[f"rss_images_stream_{s}x_mb"] = round(_run_mb(
          folder, path.name, _job(steps, name="images", path=str(path),
                                  source="stream", crop="inception",
                                  image_size=32)), 1)
    for s in scales:
      path = folder / f"arrays_{s}x.npz"
      _write_arrays(path, s * arrays)
      out[f"rss_arrays_{s}x_dataset_mb"] = _size_mb(path)
      for source in ("memory", "stream"):
        job = _job(steps, name="npz", path=str(path), source=source)
        if source == "stream":  # Writes the record cache, unmeasured.
          _run_mb(folder, f"{path.stem}_cache", job)
        out[f"rss_arrays_{source}_{s}x_mb"] = round(_run_mb(
            folder, f"{path.stem}_{source}", job), 1)
      path.unlink()
  lo, hi = min(scales), max(scales)
  for v in ("images_stream", "arrays_memory", "arrays_stream"):
    out[f"rss_{v}_{hi}x_vs_{lo}x"] = round(
        out[f"rss_{v}_{hi}x_mb"] / out[f"rss_{v}_{lo}x_mb"], 3)
  out["rss_steps"] = steps
  return out


def growth(steps: int = 1562, eval_every: int = 100,
           model: str = "lenet_300_100", arrays: int = ARRAYS) -> dict:
  """Resident memory along one run per source on the 1x arrays (batch 32,
  chunks of `eval_every` steps), each in a fresh process.

  Returns rss_growth_{memory,stream}_mb (the VmRSS in MB after every
  chunk), rss_growth_{memory,stream}_peak_mb (the run's VmHWM),
  rss_growth_steps and rss_growth_eval_every. `model`: LeNet-300-100 by
  default, ten times faster than Conv-2 on the same data path.
  """
  out = {"rss_growth_steps": steps, "rss_growth_eval_every": eval_every}
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp)
    path = folder / "arrays.npz"
    _write_arrays(path, arrays)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "LOTTERY_CACHE": str(folder / "cache")}
    for source in ("memory", "stream"):
      job = {**_job(steps, name="npz", path=str(path), source=source),
             "model.name": model, "training.eval_every": eval_every}
      if source == "stream":  # Writes the record cache, unmeasured.
        _run_mb(folder, "cache", {**job, "training.steps": 1,
                                  "training.eval_every": 1,
                                  "training.checkpoint_every": 1})
      chunks = folder / f"{source}.json"
      out[f"rss_growth_{source}_peak_mb"] = round(peak_rss_mb(
          _RUN_BY_CHUNK, json.dumps(job), str(folder / source), str(chunks),
          env=env), 1)
      out[f"rss_growth_{source}_mb"] = json.loads(chunks.read_text())
  return out
