"""Host-side JPEG decoding and crops
(`python -m experiments.benchmark --models=crops`); no flags, so tests import
it beside the other scripts."""

import statistics
import time

import numpy as np

from lottery import loop


def measure(images_per_call: int, repeats: int) -> dict:
  """Host-side JPEG decoding and crops (data.crop='inception'): images per
  second of 224x224 training and evaluation crops of 500x375 JPEGs."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from lottery import images  # pylint: disable=g-import-not-at-top
  gen = np.random.default_rng(0)
  yy, xx = np.mgrid[0:375, 0:500]
  wave = (np.sin(xx / 17.0) + np.cos(yy / 23.0))[..., None] * 60 + 128
  encoded = [images.encode((wave + gen.normal(0, 12, (375, 500, 3))).clip(
      0, 255).astype(np.uint8)) for _ in range(images_per_call)]
  with tempfile.TemporaryDirectory() as folder:
    images.write(folder, "train", encoded, np.zeros(len(encoded), int), 1)
    src = images.Images(images.Folder(folder, "train"), 224)
    idx = np.arange(len(encoded))[None]
    variants = {"train": lambda r: src.read(idx, loop.example_keys(
        idx.shape, r, (0,))), "eval": lambda r: src.read(idx)}
    seconds = {}
    for name, read in variants.items():
      times = []
      for r in range(repeats):
        t0 = time.perf_counter()
        read(r)
        times.append(time.perf_counter() - t0)
      seconds[name] = statistics.median(times)
  return {"crops_train_images_per_s": float(
              f"{len(encoded) / seconds['train']:.4g}"),
          "crops_eval_images_per_s": float(
              f"{len(encoded) / seconds['eval']:.4g}"),
          "crops_threads": images.THREADS,
          "crops_jpeg_bytes": int(np.mean([len(e) for e in encoded]))}
