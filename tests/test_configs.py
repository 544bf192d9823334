"""Every recipe in configs/ loads and validates; every ':quick' variant runs
end to end on mock data; ResNet-20 (BatchNorm, augmentation) resumes bit for
bit after SIGKILL."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import lottery
from experiments import cli
from lottery import checkpoint
from lottery import export as export_lib
from lottery import imp
from lottery import jobs
from lottery import masks
from lottery import models
from lottery import n_m
from lottery import pruning
from lottery import structure
from lottery import tickets

from conftest import leaves_equal
from conftest import quiet
from conftest import run_until_finished

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = cli.recipes()
ALL = [f"{name}:{arg}" if arg else name
       for name, args in RECIPES.items() for arg in args]
QUICK = [s for s in ALL if s.endswith(":quick") or s.endswith(",quick")]
# Sparse-training recipes run with experiments.sparse (lottery.sparse.run).
SPARSE_QUICK = [s for s in QUICK if s.startswith(("sparse_", "rigl_"))]
# Structured IMP recipes (neuron, N:M): their counts follow the units' or
# the N:M rule, checked by test_structured_quick_recipe_end_to_end.
STRUCTURED_QUICK = [s for s in QUICK
                    if s.startswith(("filter_", "structured_", "nm_"))]
# Mock TFDS splits have this many examples each; a recipe's validation split
# shrinks to VALIDATION of them.
MOCK_EXAMPLES, VALIDATION = 64, 16


@pytest.mark.parametrize("spec", ALL)
def test_every_recipe_argument_loads_and_validates(spec):
  config = cli.load_config(spec)
  lottery.config.validate(config)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_has_a_quick_variant(name):
  assert any(s.startswith(f"{name}:") for s in QUICK), RECIPES[name]


def test_conv_quick_alone_is_conv2_quick_and_other_args_are_kept():
  assert cli.load_config("conv_cifar10:quick") == cli.load_config(
      "conv_cifar10:conv2,quick")
  for arch in ("conv2", "conv4", "conv6"):
    full = cli.load_config(f"conv_cifar10:{arch}")
    quick = cli.load_config(f"conv_cifar10:{arch},quick")
    assert full.model.name == quick.model.name == arch
    assert full.pruning.layer_fractions == quick.pruning.layer_fractions
    assert (full.training.steps, quick.training.steps) == (
        {"conv2": 20_000, "conv4": 25_000, "conv6": 30_000}[arch], 20)
  with pytest.raises(lottery.LotteryError, match="takes one of"):
    cli.load_config("conv_cifar10:conv4,slow")


def expected_kept(sizes: dict[str, int], config) -> list[tuple[int, dict]]:
  """Per round: (total kept, {layer: kept} where the rule fixes it per layer).

  The rounding rule is `pruning.num_to_remove`'s, at round r's rate of the
  survivors (`imp.round_rate`: the rate itself for 'geometric', rate / (1 -
  (r - 1) rate) for 'linear'); a layer matched by `layer_fractions` is pruned
  on its own at its rate, the others layerwise, pooled per module (scope
  'module': 'fc1/kernel' with 'fc1/bias') or all pooled (scope 'global').
  """
  p = config.pruning
  overrides = pruning.parse_layer_fractions(p.layer_fractions)
  rate = {n: next((r for pat, r in overrides.items() if re.fullmatch(pat, n)),
                  None) for n in sizes}
  own = {n for n in sizes if rate[n] is not None or p.scope == "layerwise"}
  kept = {n: sizes[n] for n in own}
  pooled = {}  # group -> kept count
  for n in sizes:
    if n not in own:
      group = n.rpartition("/")[0] if p.scope == "module" else ""
      pooled[group] = pooled.get(group, 0) + sizes[n]
  out = [(sum(sizes.values()), dict(kept))]
  for r in range(1, p.rounds + 1):
    kept = {n: k - pruning.num_to_remove(
        imp.round_rate(p.schedule, rate[n] or p.fraction, r), k)
            for n, k in kept.items()}
    pooled = {g: k - pruning.num_to_remove(
        imp.round_rate(p.schedule, p.fraction, r), k)
              for g, k in pooled.items()}
    out.append((sum(kept.values()) + sum(pooled.values()), dict(kept)))
  return out


def test_mnist1d_paper_follows_the_authors_linear_schedule_past_95_percent():
  config = cli.load_config("mnist1d:paper")
  lottery.config.validate(config)
  p = config.pruning
  assert (p.schedule, p.fraction, p.rounds) == ("linear", 0.01, 96)
  # Kernel and bias of a layer ranked together, as the authors' one vector
  # per layer.
  assert (p.scope, p.reset, p.rewind_step, p.score) == (
      "module", "rewind", 0, "magnitude")
  assert tuple(p.prunable) == (".*kernel", ".*bias")
  assert (config.training.steps, config.training.batch_size,
          config.training.optimizer, config.training.learning_rate) == (
              1500, 100, "adam", 2e-2)
  assert (config.seeds.num, config.controls_every) == (3, 5)
  assert tuple(config.controls) == ("reinit", "random_prune")
  # Nominal density 1 - rounds x fraction: 4%, exactly.
  assert 1 - p.rounds * Fraction(repr(p.fraction)) == Fraction(1, 25)
  # The counts the engine's rounding gives on the model's three layers:
  # every round within 8 weights of 1 - r/100 of the 276,010, and past 95%
  # sparsity at the end (95 rounds would stop 2.5 weights short of it).
  shapes = jax.eval_shape(models.get("mnist1d_mlp", 10).init,
                          jax.random.key(0), jnp.zeros((1, 40)))["params"]
  sizes = {n: int(np.prod(s.shape))
           for n, s in masks.named_leaves(shapes).items()}
  assert sizes == {"fc1/kernel": 20000, "fc1/bias": 500,
                   "fc2/kernel": 250000, "fc2/bias": 500,
                   "out/kernel": 5000, "out/bias": 10}
  kept = [k for k, _ in expected_kept(sizes, config)]
  total = sum(sizes.values())
  assert len(kept) == 97 and kept[0] == total == 276010
  for r, k in enumerate(kept):
    assert 0 <= k - total * Fraction(100 - r, 100) <= 8, r
  assert kept[95] == 13803 and 1 - Fraction(13803, total) < Fraction(95, 100)
  assert kept[96] == 11042 and 1 - Fraction(11042, total) >= Fraction(95, 100)


def run_quick(spec, workdir, **overrides):
  """Runs a ':quick' recipe on its mock data; returns (config, summary)."""
  config = cli.load_config(spec)
  for key, value in overrides.items():
    node = config
    *groups, field = key.split(".")
    for group in groups:
      node = node[group]
    node[field] = value
  run = (lottery.pai.run if spec.startswith("pai_") else
         lottery.driver.run if spec.startswith("stability_") else lottery.run)
  if config.data.name in ("mnist1d", "npz", "images"):
    return config, run(config, workdir, log=quiet)
  config.data.data_dir = str(workdir) + "-tfds"  # Never the user's.
  if config.data.validation_size:
    config.data.validation_size = VALIDATION
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    return config, run(config, workdir, log=quiet)


# Test-only overrides: mnist1d:quick trains 200 steps in each of its 10 jobs;
# a Conv step (4M+ weights) costs ~0.1 s on a loaded CPU, and Conv-4/6 differ
# from Conv-2 only in layers, so they run without controls (which compile
# their own random pruning).
_FEW_STEPS = {"training.steps": 4, "training.eval_every": 2,
              "training.checkpoint_every": 2}
_PAI_CIFAR = {"training.lr_boundaries": (2, 3), "pai.batch_size": 8}
QUICKER = {
    "mnist1d:quick": {"training.steps": 20, "training.eval_every": 10,
                      "training.checkpoint_every": 10},
    "conv_cifar10:conv2,quick": _FEW_STEPS,
    "conv_cifar10:conv4,quick": {**_FEW_STEPS, "controls": ()},
    "conv_cifar10:conv6,quick": {**_FEW_STEPS, "controls": ()},
    # Pruning at init: every method and check runs in tests/test_pai.py; here
    # each recipe's model, data and training, with one score and one check.
    "pai_mnist1d:quick": {"pai.methods": ("synflow", "random"),
                          "pai.densities": (0.01,), "pai.checks": ("invert",)},
    # ResNet-50's path (BatchNorm recomputed at each point) from one k.
    "stability_resnet50_imagenet:quick": {"stability.steps": (5,)},
    "pai_mnist1d:cnn,quick": {"pai.methods": ("grasp",),
                              "pai.checks": ("reinit",)},
    "pai_vgg16_cifar10:quick": {**_FEW_STEPS, **_PAI_CIFAR,
                                "pai.methods": ("synflow",),
                                "pai.checks": ("shuffle",)},
    "pai_resnet20_cifar10:quick": {**_FEW_STEPS, **_PAI_CIFAR,
                                   "pai.methods": ("snip",),
                                   "pai.checks": ("reinit",)},
}


@pytest.fixture(scope="module")
def resnet_quick(tmp_path_factory):
  """One run of resnet20_cifar10:quick: (config, summary, workdir)."""
  wd = tmp_path_factory.mktemp("resnet20") / "wd"
  return (*run_quick("resnet20_cifar10:quick", wd), wd)


# conv_cifar10:quick is conv_cifar10:conv2,quick (checked above): run once.
PAI_QUICK = [s for s in QUICK if s.startswith("pai_")]


@pytest.mark.slow
@pytest.mark.parametrize("spec", PAI_QUICK)
def test_quick_pai_recipe_end_to_end(spec, tmp_path):
  config, summary = run_quick(spec, tmp_path / "wd", **QUICKER.get(spec, {}))
  p = config.pai
  assert summary["finished"]
  want = [("dense", None, 1.0)] + [
      (m, c, d) for m in p.methods for d in p.densities
      for c in (None, *(p.checks if m != "random" else ()))]
  got = [(r["method"], r["check"], r["target_density"])
         for r in summary["runs"]]
  assert got == want
  t0 = lottery.load_ticket(tmp_path / "wd", method="dense")
  total = sum(t for _, t in masks.counts(t0.mask).values())
  for r in summary["runs"][1:]:
    t = lottery.load_ticket(tmp_path / "wd", method=r["method"],
                            check=r["check"], target_density=r["target_density"],
                            seed=0)
    kept = sum(k for k, _ in masks.counts(t.mask).values())
    assert r["density"] == t.metrics["density"] == kept / total
    assert abs(kept - r["target_density"] * total) <= iterations_bound(
        config, r["method"])


def iterations_bound(config, method):
  """Kept weights stray from d * N by at most a weight per round."""
  return lottery.pai.iterations(config, method)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in QUICK
                                  if s != "conv_cifar10:quick"
                                  and not s.startswith(("pai_", "stability_"))
                                  and s not in SPARSE_QUICK
                                  and s not in STRUCTURED_QUICK])
def test_quick_recipe_end_to_end(spec, tmp_path, request):
  if spec == "resnet20_cifar10:quick":
    config, summary, wd = request.getfixturevalue("resnet_quick")
  elif spec == "imp_resnet50_imagenet:quick":
    # On a folder of encoded JPEGs: the ImageNet recipes' host-side decoding
    # and crops.
    wd = tmp_path / "wd"
    config, summary = run_quick(spec, wd, **{
        "data.name": "images",
        "data.path": request.getfixturevalue("jpeg_folder")})
    assert (config.data.crop, config.data.source) == ("inception", "stream")
  else:
    wd = tmp_path / "wd"
    config, summary = run_quick(spec, wd, **QUICKER.get(spec, {}))
  p = config.pruning
  rounds = summary["rounds"]
  assert summary["finished"]
  assert [r["round"] for r in rounds] == list(range(p.rounds + 1))
  t0 = lottery.load_ticket(wd, 0)
  sizes = {n: total for n, (_, total) in masks.counts(t0.mask).items()}
  total = sum(sizes.values())
  expected = expected_kept(sizes, config)
  assert [r["density"] for r in rounds] == [k / total for k, _ in expected]
  for r, (kept, per_layer) in enumerate(expected):
    for kind in ("ticket", *rounds[r].get("controls", {})):
      t = lottery.load_ticket(wd, r, kind)
      counts = masks.counts(t.mask)
      assert sum(k for k, _ in counts.values()) == kept, (r, kind)
      assert {n: counts[n][0] for n in per_layer} == per_layer, (r, kind)
      assert t.metrics["density"] == kept / total
      # Pruned weights are exactly zero, where training started and ended.
      w0, w1 = (masks.named_leaves(x) for x in (t.rewind_params,
                                                 t.trained_params))
      for n, m in masks.named_leaves(t.mask).items():
        if m is not None:
          assert not np.any(w0[n][~m]) and not np.any(w1[n][~m]), n
  # Controls on every controls_every-th round and on the last.
  with_controls = [r["round"] for r in rounds if "controls" in r]
  assert with_controls == [r for r in range(1, p.rounds + 1)
                           if config.controls and (
                               r % config.controls_every == 0
                               or r == p.rounds)]
  for r in with_controls:
    assert set(rounds[r]["controls"]) == set(config.controls)
  if config.data.validation_size:
    assert "early_stop_step" in rounds[-1]


@pytest.mark.slow
def test_resnet20_quick_batch_stats_and_global_pruning(resnet_quick):
  config, summary, wd = resnet_quick
  t0, t1, t2 = (lottery.load_ticket(wd, r) for r in range(3))
  # The 22 kernels (19 convs, 2 shortcut projections, the output layer) are
  # prunable; BatchNorm scales and biases and the dense bias never are.
  names = masks.named_leaves(t0.mask)
  kernels = sorted(n for n in names if n.endswith("/kernel"))
  assert len(kernels) == 22
  assert sorted(n for n, m in names.items() if m is not None) == kernels
  assert any("bn" in n.lower() or "batchnorm" in n.lower() for n in names)
  # Global at 20% of the survivors per round, halves rounded up.
  total = sum(t for _, t in masks.counts(t0.mask).values())
  kept = [total]
  for _ in range(2):
    kept.append(kept[-1] - pruning.num_to_remove(0.2, kept[-1]))
  assert kept[1] == total - round(0.2 * total)
  assert [r["density"] for r in summary["rounds"]] == [k / total for k in kept]
  for t, k in zip((t0, t1, t2), kept):
    assert sum(c for c, _ in masks.counts(t.mask).values()) == k
  # Global: the layers end at different densities.
  assert len(set(t2.metrics["layer_densities"].values())) > 1
  # BatchNorm statistics: saved with every ticket, updated by training.
  init_state = t0.rewind_model_state
  assert set(init_state) == {"batch_stats"}
  for t in (t0, t1, t2):
    assert jax.tree.structure(t.model_state) == jax.tree.structure(init_state)
    for a, b in zip(jax.tree.leaves(t.model_state),
                    jax.tree.leaves(init_state)):
      assert not np.array_equal(a, b)
  # Pruned rounds rewind weights and statistics to step 5 of round 0.
  point, point_state = jobs.load_capture(wd, "rewind_point")
  assert t1.metrics["start_step"] == config.pruning.rewind_step == 5
  assert leaves_equal(t1.rewind_model_state, point_state)
  assert not leaves_equal(point_state, init_state)
  assert leaves_equal(t1.rewind_params, lottery.apply_mask(t1.mask, point))


def test_structured_mnist1d_unstructured_keeps_the_structured_layer_counts():
  """':unstructured' keeps, every round and layer, the weights the structured
  run keeps (units u: fc1 40u, fc2 u^2, out 10u), to within 0.3%."""
  structured = cli.load_config("structured_mnist1d")
  plain = cli.load_config("structured_mnist1d:unstructured")
  for k in ("training", "data", "model", "seeds"):
    assert plain[k] == structured[k], k
  p = structured.pruning
  assert (p.structure, p.group_score, plain.pruning.structure) == (
      "neuron", "l1", "unstructured")
  units = [500]
  for r in range(1, p.rounds + 1):
    units.append(units[-1] - pruning.num_to_remove(
        imp.round_rate(p.schedule, p.fraction, r), units[-1]))
  assert units == [500, 400, 320, 256, 205, 164, 131, 105, 84]
  sizes = {"fc1/kernel": 40 * 500, "fc2/kernel": 500 * 500,
           "out/kernel": 500 * 10}
  for (_, kept), u in zip(expected_kept(sizes, plain), units):
    want = {"fc1/kernel": 40 * u, "fc2/kernel": u * u, "out/kernel": 10 * u}
    for name, k in kept.items():
      assert abs(k - want[name]) <= 0.003 * want[name], (u, name, k)
  assert kept["fc2/kernel"] != want["fc2/kernel"]  # Not exact: rounding.


def test_structured_mnist1d_cnn_unstructured_keeps_the_layer_counts():
  """':cnn,unstructured' keeps, every round, each layer's weights of the
  channel-structured run (c channels: conv1 5c, conv2 and conv3 3c^2, out
  50c): exactly down to 16 channels, then to within 5.3%."""
  structured = cli.load_config("structured_mnist1d:cnn")
  plain = cli.load_config("structured_mnist1d:cnn,unstructured")
  for k in ("training", "data", "model", "seeds"):
    assert plain[k] == structured[k], k
  assert structured.model.name == "mnist1d_cnn"
  p = structured.pruning
  channels = [25]
  for r in range(1, p.rounds + 1):
    channels.append(channels[-1] - pruning.num_to_remove(
        imp.round_rate(p.schedule, p.fraction, r), channels[-1]))
  assert channels == [25, 20, 16, 13, 10, 8]
  sizes = {"conv1/kernel": 125, "conv2/kernel": 1875, "conv3/kernel": 1875,
           "out/kernel": 1250}
  for (_, kept), c in zip(expected_kept(sizes, plain), channels):
    want = {"conv1/kernel": 5 * c, "conv2/kernel": 3 * c * c,
            "conv3/kernel": 3 * c * c, "out/kernel": 50 * c}
    assert kept.keys() == want.keys()
    for name, k in kept.items():
      assert abs(k - want[name]) <= (0 if c >= 16 else 0.053 * want[name]), (
          c, name, k)


@pytest.mark.slow
@pytest.mark.parametrize("spec", STRUCTURED_QUICK)
def test_structured_quick_recipe_end_to_end(spec, tmp_path):
  """Neuron recipes keep round(p n) fewer units of each set every round, and
  their scratch control trains; N:M recipes keep exactly N of every M
  (`n_m.pack` takes each kernel); the last round's ticket exports to a
  network that computes the masked one's outputs."""
  wd = tmp_path / "wd"
  config, summary = run_quick(spec, wd)
  p = config.pruning
  assert summary["finished"]
  rounds = summary["rounds"]
  assert [r["round"] for r in rounds] == list(range(p.rounds + 1))
  spec_ = structure.parse(p.structure)
  last = lottery.load_ticket(wd, p.rounds)
  arch = lottery.export_ticket(wd, tmp_path / "export", p.rounds)
  assert arch["source"]["coords"] == last.coords
  full = models.get(config.model.name, arch["num_classes"], **arch["options"])
  if spec_.kind == "neuron":
    alive = None
    sets = [u.producers for u in full.coupling()]
    rates = [p.fraction if f is None else f for f in pruning.unit_set_fractions(
        ["+".join(s) for s in sets],
        pruning.parse_layer_fractions(p.layer_fractions))]
    for r in range(p.rounds + 1):
      got = [int((~d).sum()) for d in structure.whole_units(
          lottery.load_ticket(wd, r).mask, full.coupling()).values()]
      alive = got if alive is None else [
          n - pruning.num_to_remove(imp.round_rate(p.schedule, f, r), n)
          for n, f in zip(alive, rates)]
      assert got == alive, r
    assert arch["widths"] == alive
    for r in range(1, p.rounds + 1):
      due = r % config.controls_every == 0 or r == p.rounds
      assert set(rounds[r].get("controls", {})) == (
          set(config.controls) if due else set()), r
  else:
    flat_mask = masks.named_leaves(last.mask)
    for name, w in masks.named_leaves(last.trained_params).items():
      m = flat_mask[name]
      if m is not None:
        assert m.sum() * spec_.m == m.size * spec_.n, name
        packed = n_m.pack(w, m, spec_.n, spec_.m, name=name)
        np.testing.assert_array_equal(n_m.unpack(packed), np.where(m, w, 0))
  small, small_params, small_state = export_lib.load_exported(
      tmp_path / "export")
  shape = (40,) if config.data.name == "mnist1d" else (32, 32, 3)
  x = np.random.default_rng(0).normal(size=(4,) + shape).astype(np.float32)
  np.testing.assert_allclose(
      small.apply({"params": small_params, **small_state}, x),
      full.apply({"params": lottery.apply_mask(last.mask,
                                               last.trained_params),
                  **last.model_state}, x), rtol=1e-4, atol=1e-4)


def _vgg_macs(model) -> int:
  """Multiply-adds of a CIFAR VGG on a 32x32 input as Li et al. 2017 count
  them: every tap of each 3x3 conv (zero padding included), then the output
  layer."""
  size, cin, total = 32, 3, 0
  for c in model.plan:
    if c == "M":
      size //= 2
    else:
      total += size * size * 9 * cin * c
      cin = c
  return total + cin * model.num_classes


@pytest.mark.slow
def test_filter_vgg16_prunes_li_et_als_vgg16_a():
  """The recipe's pruning on a random init at CIFAR shapes and real widths:
  conv 1 and convs 8-13 keep half their filters; the docstring's parameter,
  multiply-add and XLA FLOP counts, dense and shrunk."""
  p = cli.load_config("filter_vgg16_cifar10").pruning
  model = models.get("vgg16", 10)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  params = variables.pop("params")
  mask = pruning.prune(masks.make_mask(params, p.prunable),
                       jax.tree.map(jnp.abs, params), p.fraction,
                       scope=p.scope, layer_fractions=p.layer_fractions,
                       structure=p.structure, group_score=p.group_score,
                       coupling=model)
  small, small_params, small_state = lottery.shrink(model, params, variables,
                                                    mask)
  assert [c for c in small.plan if c != "M"] == [32, 64, 128, 128] + [256] * 9
  count = lambda tree: sum(np.size(leaf) for leaf in jax.tree.leaves(tree))
  assert (count(params), count(small_params)) == (14_728_266, 5_264_522)
  assert (_vgg_macs(model), _vgg_macs(small)) == (313_201_664, 206_146_048)

  def flops(m, q, state):
    f = jax.jit(lambda q, x: m.apply({"params": q, **state}, x))
    cost = f.lower(q, x).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]
  assert (flops(model, params, variables),
          flops(small, small_params, small_state)) == (495_832_704,
                                                       347_115_872)


# Test-only overrides: each group of a sparse run compiles its own train
# step (tests/test_sparse.py runs every method); ResNet-50's takes minutes to
# compile on a loaded 2-core CPU (twice: dense baseline and RigL), so here its
# quick variant builds, and its RigL hook runs once on its weights under jit.
SPARSE_QUICKER = {
    "sparse_mnist1d:quick": {"training.steps": 50, "training.eval_every": 25,
                             "training.checkpoint_every": 25,
                             "sparse.methods": ("rigl",),
                             "sparse.distribution": ("erk",)},
    "rigl_resnet20_cifar10:quick": {"training.steps": 10,
                                    "training.lr_boundaries": (5,)},
}


@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in SPARSE_QUICK
                                  if not s.startswith("rigl_resnet50")])
def test_sparse_quick_recipe_end_to_end(spec, tmp_path):
  config = cli.load_config(spec)
  for key, value in SPARSE_QUICKER.get(spec, {}).items():
    group, field = key.split(".")
    config[group][field] = value
  wd = tmp_path / "wd"
  if config.data.name in lottery.data.TFDS_NAMES:
    config.data.data_dir = str(wd) + "-tfds"
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
      summary = lottery.sparse.run(config, wd, log=quiet)
  else:
    summary = lottery.sparse.run(config, wd, log=quiet)
  s = config.sparse
  assert summary["finished"]
  groups = len(s.methods) * len(s.densities) * len(s.distribution)
  assert len(summary["runs"]) == (1 + groups) * config.seeds.num
  dense = lottery.load_ticket(wd, method="dense", seed=0).mask
  for r in summary["runs"][config.seeds.num:]:
    t = lottery.load_ticket(wd, method=r["method"], seed=r["seed"],
                            distribution=r["distribution"],
                            target_density=r["target_density"])
    want = lottery.distributions.keep_counts(r["distribution"], dense,
                                             r["target_density"])
    assert {k: c for k, (c, _) in masks.counts(t.mask).items()} == want


@pytest.mark.slow
def test_rigl_resnet50_quick_builds_and_updates_exactly(tmp_path):
  from lottery import scores  # pylint: disable=g-import-not-at-top
  from lottery import sparse_updates  # pylint: disable=g-import-not-at-top
  from lottery import step as step_lib  # pylint: disable=g-import-not-at-top
  config = cli.load_config("rigl_resnet50_imagenet:quick")
  lottery.sparse.check(config)
  config.data.data_dir = str(tmp_path / "tfds")
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    exp = lottery.build(config)
  kernels = [n for n in masks.named_leaves(exp.dense_mask) if "kernel" in n]
  assert len(kernels) == 54 and "conv/kernel" in kernels  # 53 convs + out
  counts = lottery.distributions.keep_counts("erk", exp.dense_mask, 0.2)
  mask = pruning.keep_top(exp.dense_mask, scores.random(exp.dense_mask,
                                                        jax.random.key(0)),
                          counts)  # Random positions, exact counts.
  table = sparse_updates.drop_table(counts, np.asarray([0.0, 0.3]))
  hook = jax.jit(sparse_updates.drop_and_grow("rigl", exp.dense_mask, counts,
                                              table, 5))
  params = lottery.apply_mask(mask, exp.init_params)
  state = step_lib.TrainState(params, exp.init_model_state, {}, mask,
                              jnp.int32(5), jax.random.key_data(
                                  jax.random.key(0)))
  new = hook(state, exp.init_params, jax.random.key(1))
  assert {k: c for k, (c, _) in masks.counts(new).items()} == counts


# Bit-exact resume with BatchNorm and augmentation: ResNet-20 quick on an
# .npz of CIFAR-shaped images, in subprocesses killed with SIGKILL.


@pytest.fixture(scope="module")
def cifar_npz(tmp_path_factory):
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("cifar") / "cifar.npz"
  np.savez(path, x_train=rng.random((96, 32, 32, 3), np.float32),
           y_train=rng.integers(0, 10, 96), x_test=rng.random(
               (32, 32, 32, 3), np.float32), y_test=rng.integers(0, 10, 32))
  return str(path)


# Round 1 trains steps 5..30 with a mid-run checkpoint every 5: a window of
# four checkpoints to kill it in. No controls: they would only add
# compilations.
RESUME_FLAGS = ("--config=resnet20_cifar10:quick", "--config.data.name=npz",
                "--config.data.augment=crop_flip",
                "--config.training.steps=30",
                "--config.training.checkpoint_every=5",
                "--config.pruning.rounds=1", "--config.controls=()")


def _cli(workdir, npz):
  return [sys.executable, "-m", "experiments.imp", f"--workdir={workdir}",
          f"--config.data.path={npz}", *RESUME_FLAGS]


@pytest.fixture(scope="module")
def subprocess_env(tmp_path_factory):
  # The three processes share a compilation cache: the second and third load
  # the first one's executables instead of compiling them again.
  cache = tmp_path_factory.mktemp("jax_cache")
  return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
          "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


@pytest.fixture(scope="module")
def reference_run(cifar_npz, subprocess_env, tmp_path_factory):
  wd = tmp_path_factory.mktemp("ref") / "wd"
  ref = subprocess.run(_cli(wd, cifar_npz), cwd=ROOT, env=subprocess_env,
                       capture_output=True, text=True, timeout=300)
  assert ref.returncode == 0, ref.stderr
  return wd


def assert_same_run(a, b):
  for r in range(2):
    ta, tb = lottery.load_ticket(a, r), lottery.load_ticket(b, r)
    for f in ("mask", "rewind_params", "trained_params", "model_state",
              "rewind_model_state"):
      assert leaves_equal(getattr(ta, f), getattr(tb, f)), (r, f)
    assert ta.metrics["history"] == tb.metrics["history"]


def _in_round_1(wd, progress) -> bool:
  """Whether round 0 is summarised and the mid-run checkpoint on disk is
  round 1's (round 0's own is removed just after its ticket is written)."""
  if not (wd / "summary.json").exists() or not progress.exists():
    return False
  try:
    job = checkpoint.read_json(progress)["job"]
  except (OSError, ValueError):  # Replaced between the two reads.
    return False
  return job.startswith(tickets.imp_path(1))


@pytest.mark.slow
def test_sigkill_with_batchnorm_and_augmentation_resumes_bit_exact(
    cifar_npz, subprocess_env, reference_run, tmp_path):
  # The kill must land while round 1's mid-run checkpoint exists: with its
  # programs cached by the reference run, round 1 can be over between two
  # polls on a loaded machine, so a missed window is tried again anew.
  for attempt in range(4):
    wd = tmp_path / f"run{attempt}"
    proc = subprocess.Popen(_cli(wd, cifar_npz), cwd=ROOT,
                            env=subprocess_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    progress = wd / "progress" / "progress.json"
    deadline = time.time() + 240
    try:
      while time.time() < deadline and proc.poll() is None:
        if _in_round_1(wd, progress):
          break
        time.sleep(0.002)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    if _in_round_1(wd, progress):
      break
  assert _in_round_1(wd, progress), (
      "every run ended before round 1's checkpoint")
  killed_at = json.loads(progress.read_text())
  assert not lottery.summary(wd)["finished"]
  res = subprocess.run(_cli(wd, cifar_npz), cwd=ROOT, env=subprocess_env,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert lottery.summary(wd)["finished"], killed_at
  assert_same_run(reference_run, wd)
  # BatchNorm statistics and augmentation were both in play.
  t1 = lottery.load_ticket(wd, 1)
  assert set(t1.model_state) == {"batch_stats"}
  assert json.loads((wd / "config.json").read_text())["data"]["augment"] == (
      "crop_flip")


class _Interrupt(Exception):
  pass


@pytest.mark.slow
def test_in_process_interruption_with_batchnorm_resumes_bit_exact(
    cifar_npz, reference_run, tmp_path, monkeypatch):
  config = cli.load_config("resnet20_cifar10:quick")
  config.data.update(name="npz", path=cifar_npz, augment="crop_flip")
  config.training.update(steps=30, checkpoint_every=5)
  config.pruning.rounds = 1
  config.controls = ()
  real_save = jobs.MidRun.save
  saves = []
  def save(self, job, state, *a, **k):
    real_save(self, job, state, *a, **k)
    saves.append((job, int(state.step)))
    # Round 0 saves at steps 5..25 (saves 1-5), round 1 at 10..25 (6-9):
    # stop in round 0 after its rewind point (step 5) was captured; the
    # SIGKILL test above stops in round 1.
    if len(saves) == 3:
      raise _Interrupt()
  monkeypatch.setattr(jobs.MidRun, "save", save)
  interruptions = run_until_finished(config, tmp_path / "run", _Interrupt)
  assert interruptions == 1, saves
  assert [step for _, step in saves] == [5, 10, 15, 20, 25, 10, 15, 20, 25]
  assert lottery.load_ticket(tmp_path / "run", 1).metrics["start_step"] == 5
  assert_same_run(reference_run, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in QUICK
                                  if s.startswith("stability_")])
def test_stability_quick_recipe_end_to_end(spec, tmp_path):
  """BatchNorm models (ResNet-20, VGG-16, ResNet-50) included: their paths'
  statistics are recomputed at every point."""
  config, summary = run_quick(spec, tmp_path / "wd", **QUICKER.get(spec, {}))
  s = config.stability
  assert summary["finished"]
  assert [(p["source"], p["k"]) for p in summary["pairs"]] == [
      (src, k) for src in s.sources for k in s.steps]
  for p in summary["pairs"]:
    assert len(p["path"]["test_error"]) == s.points
    assert -1 <= p["barrier_test"] <= 1


# The ImageNet recipes (host-side JPEG decoding and crops) on a locally
# written folder of a few thousand JPEGs of mixed shapes, and RigL's on mock
# TFDS imagenet2012 (IMP's runs there in test_quick_recipe_end_to_end).


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
  from test_images import write_jpegs  # pylint: disable=g-import-not-at-top
  return write_jpegs(tmp_path_factory.mktemp("imagenet_like") / "ds", 2000,
                     200, classes=100,
                     shapes=((48, 64, 3), (64, 48, 3), (56, 56, 3)))


# Each data path once (the job path is one for every method): IMP's recipe
# on encoded JPEGs (test_quick_recipe_end_to_end), RigL's on TFDS's mock
# data.
@pytest.mark.slow
def test_rigl_resnet50_quick_recipe_on_mock_data(tmp_path):
  config = cli.load_config("rigl_resnet50_imagenet:quick")
  assert (config.data.crop, config.data.source) == ("inception", "stream")
  wd = tmp_path / "wd"
  config.data.data_dir = str(wd) + "-tfds"
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    summary = lottery.sparse.run(config, wd, log=quiet)
  assert summary["finished"]
  assert len(summary["runs"]) == 2  # dense + RigL at 0.2.
  for job in summary["runs"]:
    assert np.isfinite(job["test_loss"]) and 0 <= job["test_accuracy"] <= 1
