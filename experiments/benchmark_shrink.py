"""What structured pruning buys: parameters, FLOPs and latency of dense,
masked and shrunk networks (`python -m experiments.benchmark --models=shrink`).

For each model and structured sparsity s, a magnitude score of a fresh
initialization removes the fraction s of every unit set's units
(`lottery.prune(..., structure='neuron', scope='layerwise')`), and
`lottery.shrink` turns the masked network into a smaller one. Reported per
(model, s):

  params_{dense,masked,shrunk}   parameter counts (masked: the unpruned ones)
  flops_{dense,shrunk}           FLOPs of the compiled forward pass at batch
                                 256 (XLA's cost analysis; the masked network
                                 runs the dense one's program)
  ms_b{1,256}_{dense,masked,shrunk}
                                 median latency of the jitted forward pass
  speedup_b256                   dense / shrunk latency at batch 256
  flop_reduction                 dense / shrunk FLOPs
  speedup_vs_flops               speedup_b256 / flop_reduction (target on the
                                 CPU: >= 0.6)

The variants' calls alternate (`timing.median_times`). ResNet-20 and
ResNet-50 shrink their blocks' inner channels and their residual streams.
The shrunk networks' convolutions of at most `narrow` channels run as sums
of taps on the CPU (default `lottery.models.convolution.NARROW`, 8, the
`narrow` of every network `lottery.shrink` returns); `narrow=0` times the
library kernels alone.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from lottery import masks
from lottery import models
from lottery import pruning
from lottery import rng as rng_lib
from lottery import scores
from lottery.models import convolution
import lottery
from experiments import timing

# name: (model, input shape of one example, model options). ResNet-50 at a
# quarter of its width (16: streams 16, 64, 128, 256, 512) on 64x64 images,
# 1/196 of its ImageNet forward pass, so that it runs on a CPU in minutes.
MODELS = {
    "mnist1d_mlp": ("mnist1d_mlp", (40,), {}),
    "mnist1d_cnn": ("mnist1d_cnn", (40,), {}),
    "resnet20": ("resnet20", (32, 32, 3), {}),
    "vgg16": ("vgg16", (32, 32, 3), {}),
    "resnet50": ("resnet50", (64, 64, 3), {"width": 16}),
}
SPARSITIES = (0.5, 0.75, 0.9)
BATCHES = (1, 256)


def _count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def _forward(model, params, state):
  """The jitted eval-mode forward pass (params, x) -> logits."""
  del params
  return jax.jit(lambda p, x: model.apply({"params": p, **state}, x))


def _latencies(fns: dict, nets: dict, x, repeats: int) -> dict[str, float]:
  """{variant: median ms of `fns[v](params, x)`}, 4 significant digits; the
  variants alternate, each timing ~0.1 s of the dense net's calls."""
  def timed(v):
    start = time.perf_counter()
    jax.block_until_ready(fns[v](nets[v][1], x))
    return time.perf_counter() - start
  calls = max(1, int(0.1 / min(timed("dense") for _ in range(3))))
  med = timing.median_times(
      lambda v: sum(timed(v) for _ in range(calls)), nets, repeats)
  return {v: float(f"{1000 * t / calls:.4g}") for v, t in med.items()}


def measure(names=tuple(MODELS), sparsities=SPARSITIES,
            repeats: int = 5, narrow: int = convolution.NARROW) -> dict:
  """{f'{model}_{int(100 s)}_{key}': value} for the keys of the module doc,
  and 'narrow_channels': `narrow`."""
  return {**_measure(names, sparsities, repeats, narrow),
          "narrow_channels": narrow}


def _measure(names, sparsities, repeats: int, narrow: int) -> dict:
  out = {}
  for name in names:
    model_name, shape, options = MODELS[name]
    model = models.get(model_name, 10, **options)
    xs = {b: jnp.asarray(np.random.default_rng(b).normal(
        size=(b,) + shape).astype(np.float32)) for b in BATCHES}
    variables = jax.jit(lambda k, m=model: m.init(rng_lib.flat(k),
                                                  xs[1]))(jax.random.key(0))
    params = variables.pop("params")
    state = dict(variables)
    dense_mask = masks.make_mask(params)
    for s in sparsities:
      mask = pruning.prune(dense_mask, scores.magnitude(params), s,
                           structure="neuron", coupling=model)
      small, small_params, small_state = lottery.shrink(model, params,
                                                           state, mask)
      if getattr(small, "narrow", None) is not None:  # The conv models.
        small = small.clone(narrow=narrow)
      nets = {"dense": (model, params, state),
              "masked": (model, masks.apply_mask(mask, params), state),
              "shrunk": (small, small_params, small_state)}
      fns = {v: _forward(*net) for v, net in nets.items()}
      key = f"{name}_{int(round(100 * s))}"
      out[f"{key}_params_dense"] = _count(params)
      # Non-prunable leaves (biases) count whole.
      pruned = sum(t - k for k, t in masks.counts(mask).values())
      out[f"{key}_params_masked"] = _count(params) - pruned
      out[f"{key}_params_shrunk"] = _count(small_params)
      for v in ("dense", "shrunk"):
        cost = fns[v].lower(nets[v][1], xs[256]).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out[f"{key}_flops_{v}"] = float(cost["flops"])
      for b in BATCHES:
        for v, ms in _latencies(fns, nets, xs[b], repeats).items():
          out[f"{key}_ms_b{b}_{v}"] = ms
      # Equal outputs: the shrunk network computes the masked one's.
      np.testing.assert_allclose(
          fns["shrunk"](small_params, xs[256]),
          fns["masked"](nets["masked"][1], xs[256]), rtol=1e-3, atol=1e-3)
      speedup = out[f"{key}_ms_b256_dense"] / out[f"{key}_ms_b256_shrunk"]
      flops = out[f"{key}_flops_dense"] / out[f"{key}_flops_shrunk"]
      out[f"{key}_speedup_b256"] = round(speedup, 3)
      out[f"{key}_flop_reduction"] = round(flops, 3)
      out[f"{key}_speedup_vs_flops"] = round(speedup / flops, 3)
  return out



def measure_tickets(workdir, rounds, shape: tuple[int, ...],
                    repeats: int = 5) -> dict:
  """What a run's tickets shrink to: per IMP round r in `rounds`, replicate
  0's ticket exported (`lottery.export_ticket`) and loaded back
  (`lottery.load_exported`) against the full-size masked network.

  Args:
    workdir: a finished IMP run.
    rounds: the rounds to measure.
    shape: the shape of one input example (MNIST-1D: (40,)).
    repeats: timings per variant and batch size (`timing.median_times`).

  Returns:
    {f'{r}_{key}': value}: params_{dense,shrunk} (parameter counts),
    widths (the exported widths), ms_b{1,256}_{dense,shrunk} (median
    latency of the jitted forward pass; 'dense' is the masked full-size
    network, which runs the dense program), speedup_b256.
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  out = {}
  config = lottery.load_config(workdir)
  xs = {b: jnp.asarray(np.random.default_rng(b).normal(
      size=(b,) + tuple(shape)).astype(np.float32)) for b in BATCHES}
  with tempfile.TemporaryDirectory() as tmp:
    for r in rounds:
      ticket = lottery.load_ticket(workdir, r)
      arch = lottery.export_ticket(workdir, f"{tmp}/{r}", r)
      small = lottery.load_exported(f"{tmp}/{r}")
      full = models.get(config.model.name, arch["num_classes"],
                        **arch["options"])
      nets = {"dense": (full, masks.apply_mask(ticket.mask,
                                               ticket.trained_params),
                        ticket.model_state),
              "shrunk": small}
      fns = {v: _forward(*net) for v, net in nets.items()}
      np.testing.assert_allclose(
          fns["shrunk"](small[1], xs[256]),
          fns["dense"](nets["dense"][1], xs[256]), rtol=1e-3, atol=1e-3)
      out[f"{r}_params_dense"] = _count(ticket.trained_params)
      out[f"{r}_params_shrunk"] = _count(small[1])
      out[f"{r}_widths"] = arch["widths"]
      for b in BATCHES:
        for v, ms in _latencies(fns, nets, xs[b], repeats).items():
          out[f"{r}_ms_b{b}_{v}"] = ms
      out[f"{r}_speedup_b256"] = round(
          out[f"{r}_ms_b256_dense"] / out[f"{r}_ms_b256_shrunk"], 3)
  return out
