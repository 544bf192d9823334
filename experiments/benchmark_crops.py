"""Host-side JPEG decoding and crops
(`python -m experiments.benchmark --models=crops`); no flags, so tests import
it beside the other scripts."""

import contextlib
import math
import time

import numpy as np

from experiments import timing
from lottery import loop

# Images per second that one accelerator's ResNet-50 training consumes, the
# rate the host's crops are compared with: a round figure above NVIDIA's
# published 2,470 img/s for one A100 80GB in mixed precision (ResNet-50 v1.5,
# batch 256, pytorch-21.03 container; the DGX A100 table of
# NVIDIA/DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/
# README.md). No H100 figure is checked here: an H100 is faster still.
ACCELERATOR_IMAGES_PER_S = 3000


@contextlib.contextmanager
def _threads(images, n: int | None):
  """`images.THREADS` set to n (None: left as it is) inside the block."""
  saved = images.THREADS
  images.THREADS = saved if n is None else n
  try:
    yield
  finally:
    images.THREADS = saved


def jpegs(n: int, seed: int = 0) -> list[bytes]:
  """n JPEGs of 500x375 (ImageNet's typical size, ~73 KB at quality 90): a
  smooth pattern plus noise, each its own noise."""
  from lottery import images  # pylint: disable=g-import-not-at-top
  gen = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:375, 0:500]
  wave = (np.sin(xx / 17.0) + np.cos(yy / 23.0))[..., None] * 60 + 128
  return [images.encode((wave + gen.normal(0, 12, (375, 500, 3))).clip(
      0, 255).astype(np.uint8)) for _ in range(n)]


def measure(images_per_call: int, repeats: int, threads=(1, 2)) -> dict:
  """Host-side JPEG decoding and crops (data.crop='inception'): images per
  second of 224x224 training and evaluation crops of 500x375 JPEGs with
  the reader's default threads, and of training crops with each count of
  `threads` reader threads (alternating, median of `repeats`). The rate of
  one thread is one core's; `crops_cores_for_accelerator` is how many such
  cores would feed ACCELERATOR_IMAGES_PER_S training crops."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from lottery import images  # pylint: disable=g-import-not-at-top
  encoded = jpegs(images_per_call)
  with tempfile.TemporaryDirectory() as folder:
    images.write(folder, "train", encoded, np.zeros(len(encoded), int), 1)
    src = images.Images(images.Folder(folder, "train"), 224)
    idx = np.arange(len(encoded))[None]
    calls = [0]  # Each training read draws other crops.

    def train():
      calls[0] += 1
      return src.read(idx, loop.example_keys(idx.shape, calls[0], (0,)))

    variants = {"train": (None, train), "eval": (None, lambda: src.read(idx))}
    variants.update({f"train_{n}": (n, train) for n in threads})

    def timed(v):
      n, read = variants[v]
      with _threads(images, n):
        t0 = time.perf_counter()
        read()
        return time.perf_counter() - t0

    seconds = timing.median_times(timed, variants, repeats)
  rate = {v: len(encoded) / s for v, s in seconds.items()}
  out = {"crops_train_images_per_s": float(f"{rate['train']:.4g}"),
         "crops_eval_images_per_s": float(f"{rate['eval']:.4g}"),
         "crops_threads": images.THREADS, "crops_size": 224,
         "crops_jpeg_bytes": int(np.mean([len(e) for e in encoded]))}
  for n in threads:
    out[f"crops_train_threads_{n}_images_per_s"] = float(
        f"{rate[f'train_{n}']:.4g}")
  per_core = rate[f"train_{min(threads)}"] / min(threads)
  out.update(crops_per_core_images_per_s=float(f"{per_core:.4g}"),
             crops_accelerator_images_per_s=ACCELERATOR_IMAGES_PER_S,
             crops_cores_for_accelerator=math.ceil(
                 ACCELERATOR_IMAGES_PER_S / per_core))
  return out
