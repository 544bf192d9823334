"""Structured pruning: N:M, whole units with coupling, shrink; eagerly,
jitted and vmapped, and in IMP and PaI runs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import masks
from lottery import models
from lottery import pai
from lottery import pruning
from lottery import structure
from lottery.errors import LotteryError

from conftest import leaves_equal
from conftest import quiet
from conftest import run_interrupted
from conftest import tiny


def _np(tree):
  return jax.tree.map(np.asarray, tree)


# -- parsing ---------------------------------------------------------------

def test_parse():
  assert structure.parse("2:4") == structure.Structure("N:M", 2, 4)
  assert str(structure.parse("1:8")) == "1:8"
  assert structure.parse("neuron").kind == "neuron"
  for bad in ("4:2", "0:4", "2:2", "a:b", "channel", 3):
    with pytest.raises(LotteryError, match="^structure: "):
      structure.parse(bad)
  with pytest.raises(LotteryError, match=r"known|one of \['unstructured'"):
    structure.parse("block")
  # One spelling of an N:M pattern, so that a rerun's config compares equal.
  for other in ("02:04", " 2:4", "2:4 "):
    with pytest.raises(LotteryError, match=r"^structure: write the N:M "
                       r"structure as '2:4' \(got "):
      structure.parse(other)
  # Where only N:M is read, the message says so.
  for bad in ("2/4", "", "neuron"):
    with pytest.raises(LotteryError, match=r"^sparse.n_m: must be an N:M "
                       r"pattern such as '2:4'"):
      structure.parse_n_m(bad, field="sparse.n_m")
  # A bias cannot hold N:M groups: the message says to leave biases out.
  with pytest.raises(LotteryError, match=r"of out/bias \(shape \(10,\)\), "
                     r"whose length 10 is not a multiple of 4 \(N:M prunes "
                     r"kernels along their inputs: leave biases out, "
                     r"pruning.prunable=\('.\*kernel',\)\)$"):
    pruning.prune({"out": {"bias": np.ones(10, bool)}},
                  {"out": {"bias": np.ones(10)}}, 0.5, structure="2:4")
  with pytest.raises(LotteryError, match=r"^group_score: .*\['sum', 'l1', "
                     r"'l2', 'taylor', 'bn_scale'\]"):
    pruning.prune({"w": np.ones(4, bool)}, {"w": np.ones(4)}, 0.5,
                  structure="neuron", group_score="mean",
                  coupling=(structure.Units(("a",), ()),))
  # A reduction of unit scores where there are no units would be ignored.
  for spec in ("unstructured", "2:4"):
    with pytest.raises(LotteryError) as e:
      pruning.prune({"w": np.ones((4, 4), bool)}, {"w": np.ones((4, 4))}, 0.5,
                    structure=spec, group_score="l1")
    assert str(e.value) == (
        f"group_score: 'l1' reduces each unit's weight scores, and {spec!r} "
        f"has no units: set it to 'sum' or structure to 'neuron' or 'head'")


@pytest.mark.parametrize("block", ["pruning", "pai"])
def test_config_refuses_a_unit_reduction_without_units(block):
  c = lottery.base_config()
  if block == "pai":
    c.method = "pai"
  getattr(c, block).group_score = "l2"
  with pytest.raises(LotteryError) as e:
    lottery.config.validate(c)
  assert str(e.value) == (
      f"{block}.group_score: 'l2' reduces each unit's weight scores, and "
      f"'unstructured' has no units: set it to 'sum' or {block}.structure to "
      f"'neuron' or 'head'")
  getattr(c, block).structure = "neuron"
  lottery.config.validate(c)


# -- N:M -------------------------------------------------------------------

def _reference_n_m(alive, scores, n, m, axis):
  """Per run of m along `axis`: the n best survivors (later wins a tie)."""
  a = np.moveaxis(np.asarray(alive, bool), axis, -1)
  s = np.moveaxis(np.asarray(scores, np.float64), axis, -1)
  out = np.zeros_like(a)
  for idx in np.ndindex(a.shape[:-1]):
    for start in range(0, a.shape[-1], m):
      run = [(a[idx][i], s[idx][i], i) for i in range(start, start + m)]
      best = sorted(run, reverse=True)[:n]
      for alive_i, _, i in best:
        out[idx + (i,)] = alive_i
  return np.moveaxis(out, -1, axis)


def test_n_m_keeps_n_of_every_m_along_the_input_axis():
  rng = np.random.default_rng(0)
  # Few distinct values: many ties.
  scores = {"fc1": {"kernel": rng.integers(0, 3, (8, 6)).astype(np.float32),
                    "bias": np.zeros(6, np.float32)},
            "conv": {"kernel": rng.normal(size=(3, 3, 4, 5)).astype(
                np.float32)}}
  mask = {"fc1": {"kernel": np.ones((8, 6), bool), "bias": None},
          "conv": {"kernel": np.ones((3, 3, 4, 5), bool)}}
  new = _np(pruning.prune(mask, scores, 0.2, structure="2:4"))
  k = new["fc1"]["kernel"]
  assert (k.reshape(2, 4, 6).sum(axis=1) == 2).all()
  # Not along the other axis: some run of 4 columns does not keep 2.
  assert (k[:, :4].sum(axis=1) != 2).any()
  assert (new["conv"]["kernel"].reshape(3, 3, 1, 4, 5).sum(axis=3) == 2).all()
  assert new["fc1"]["bias"] is None
  for leaf, axis in (("fc1", 0), ("conv", 2)):
    np.testing.assert_array_equal(
        new[leaf]["kernel"],
        _reference_n_m(mask[leaf]["kernel"], scores[leaf]["kernel"], 2, 4,
                       axis))
  assert masks.density(new) == 0.5


def test_n_m_ties_keep_the_later_weight_and_pruned_stay_pruned():
  scores = {"w": np.zeros((8, 1), np.float32)}
  new = _np(pruning.prune({"w": np.ones((8, 1), bool)}, scores, 0.0,
                          structure="2:4"))
  np.testing.assert_array_equal(new["w"][:, 0], [0, 0, 1, 1, 0, 0, 1, 1])
  # A pruned weight with the best score does not come back; a run with one
  # survivor keeps it.
  alive = np.array([[1], [1], [1], [0], [1], [0], [0], [0]], bool)
  scores = {"w": np.array([[1], [2], [3], [9], [1], [9], [9], [9]],
                          np.float32)}
  new = _np(pruning.prune({"w": alive}, scores, 0.0, structure="2:4"))
  np.testing.assert_array_equal(new["w"][:, 0], [0, 1, 1, 0, 1, 0, 0, 0])


def test_n_m_under_jit_and_vmap():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(3, 16, 4)).astype(np.float32)
  alive = rng.random((3, 16, 4)) < 0.8
  prune = lambda m, s: pruning.prune({"w": m}, {"w": s}, 0.5,
                                     structure="1:4")["w"]
  eager = np.stack([np.asarray(prune(alive[i], scores[i])) for i in range(3)])
  np.testing.assert_array_equal(np.asarray(jax.jit(prune)(alive[0],
                                                           scores[0])),
                                eager[0])
  np.testing.assert_array_equal(np.asarray(jax.vmap(prune)(alive, scores)),
                                eager)
  for i in range(3):
    np.testing.assert_array_equal(
        eager[i], _reference_n_m(alive[i], scores[i], 1, 4, 0))


def test_n_m_refuses_an_axis_m_does_not_divide():
  mask = {"fc1": {"kernel": np.ones((6, 4), bool)}}
  with pytest.raises(LotteryError, match=r"^structure: '2:4' groups 4 "
                     r"weights along axis 0 of fc1/kernel \(shape \(6, 4\)\), "
                     r"whose length 6 is not a multiple of 4$"):
    pruning.prune(mask, {"fc1": {"kernel": np.ones((6, 4))}}, 0.5,
                  structure="2:4")


# -- neuron ----------------------------------------------------------------

def _two_layer(units=10):
  """fc1 (3, units) -> out (units, 2), mask and unit-ranked magnitudes:
  unit j's weights all score u[j]."""
  u = np.array([5, 1, 7, 1, 9, 2, 8, 3, 6, 4], np.float32)[:units]
  scores = {"fc1": {"kernel": np.tile(u, (3, 1)), "bias": np.zeros(units)},
            "out": {"kernel": np.tile(u[:, None], (1, 2)),
                    "bias": np.zeros(2)}}
  mask = {"fc1": {"kernel": np.ones((3, units), bool), "bias": None},
          "out": {"kernel": np.ones((units, 2), bool), "bias": None}}
  coupling = (structure.Units(("fc1",), ("out",)),)
  return mask, scores, coupling


def _units_alive(mask):
  cols = np.asarray(mask["fc1"]["kernel"]).any(axis=0)
  rows = np.asarray(mask["out"]["kernel"]).any(axis=1)
  # Whole units: a unit's column and its read row live or die together.
  np.testing.assert_array_equal(cols, rows)
  np.testing.assert_array_equal(np.asarray(mask["fc1"]["kernel"]),
                                np.tile(cols, (3, 1)))
  return cols


@pytest.mark.parametrize("fraction, removed", [
    (0.2, [1, 3]),  # 2 of 10; units 1 and 3 tie at 1
    (0.25, [1, 3, 5]),  # 2.5 rounds half up: 3
    (0.3, [1, 3, 5]),
    (0.35, [1, 3, 5, 7]),  # 3.5: 4
])
def test_neuron_counts_follow_the_rounding_rule(fraction, removed):
  mask, scores, coupling = _two_layer()
  want = np.ones(10, bool)
  want[removed] = False
  fn = lambda m, s: pruning.prune(m, s, fraction, structure="neuron",
                                  coupling=coupling)
  np.testing.assert_array_equal(_units_alive(_np(fn(mask, scores))), want)
  np.testing.assert_array_equal(_units_alive(_np(jax.jit(fn)(mask, scores))),
                                want)
  stack = lambda t: jax.tree.map(lambda x: np.stack([x, x]), t)
  both = _np(jax.vmap(fn)(stack(mask), stack(scores)))
  for i in range(2):
    np.testing.assert_array_equal(
        _units_alive(jax.tree.map(lambda x, i=i: x[i], both)), want)


def test_neuron_ties_go_by_unit_index_and_pruned_units_stay_pruned():
  mask, scores, coupling = _two_layer()
  scores = jax.tree.map(np.ones_like, scores)
  first = _np(pruning.prune(mask, scores, 0.2, structure="neuron",
                            coupling=coupling))
  np.testing.assert_array_equal(np.flatnonzero(~_units_alive(first)), [0, 1])
  # 0.25 of the 8 survivors: 2 more, the next by index.
  second = _np(pruning.prune(first, scores, 0.25, structure="neuron",
                             coupling=coupling))
  np.testing.assert_array_equal(np.flatnonzero(~_units_alive(second)),
                                [0, 1, 2, 3])


def test_group_scores_reduce_the_scores_of_surviving_weights():
  mask, _, coupling = _two_layer(4)
  # A unit's scores (fc1 column, then out row), sum / l1 / l2: unit 0: 3,
  # -3, -1.5: -1.5 / 7.5 / 4.5; unit 1: 1, 1, 0.5: 2.5 / 2.5 / 1.5; unit 2:
  # 2, 2, 1: 5 / 5 / 3; unit 3: 5, -4, -2: -1 / 11 / 6.7. The lowest goes.
  k1 = np.array([[3, 1, 2, 5], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
  k2 = np.array([[-3] * 2, [1] * 2, [2] * 2, [-4] * 2], np.float32) / [1, 2]
  scores = {"fc1": {"kernel": k1, "bias": np.zeros(4)},
            "out": {"kernel": k2, "bias": np.zeros(2)}}
  gone = {}
  for g in structure.REDUCTIONS:
    new = _np(pruning.prune(mask, scores, 0.25, structure="neuron",
                            group_score=g, coupling=coupling))
    gone[g] = np.flatnonzero(~_units_alive(new)).tolist()
  assert gone == {"sum": [0], "l1": [1], "l2": [1]}


def test_neuron_takes_prunable_biases_with_their_units():
  model = models.get("lenet_300_100", 10)
  params = model.init(jax.random.key(0), jnp.ones((1, 784)))["params"]
  mask = masks.make_mask(params, (".*",))
  new = _np(pruning.prune(mask, jax.tree.map(jnp.abs, params), 0.5,
                          structure="neuron", coupling=model))
  for layer, units in (("fc1", 150), ("fc2", 50)):
    alive = new[layer]["kernel"].any(axis=0)
    assert alive.sum() == units
    np.testing.assert_array_equal(new[layer]["bias"], alive)
  assert new["out"]["bias"].all()  # classes are not units
  small, small_params, _ = lottery.shrink(model, params, {}, new)
  assert small.features == (150, 50)
  x = jax.random.normal(jax.random.key(1), (4, 784))
  np.testing.assert_allclose(
      small.apply({"params": small_params}, x),
      model.apply({"params": lottery.apply_mask(new, params)}, x),
      rtol=1e-5, atol=1e-5)


def test_keep_top_keeps_exact_unit_counts():
  mask, scores, coupling = _two_layer()
  fn = lambda m, s: pruning.keep_top(m, s, {"fc1": 6}, structure="neuron",
                                     coupling=coupling)
  want = np.ones(10, bool)
  want[[1, 3, 5, 7]] = False
  np.testing.assert_array_equal(_units_alive(_np(fn(mask, scores))), want)
  np.testing.assert_array_equal(_units_alive(_np(jax.jit(fn)(mask, scores))),
                                want)
  with pytest.raises(LotteryError, match=r"^counts: cannot keep 11 units of "
                     r"fc1, which has 10$"):
    pruning.keep_top(mask, scores, {"fc1": 11}, structure="neuron",
                     coupling=coupling)
  with pytest.raises(LotteryError, match=r"^counts: no keep count for fc1"):
    pruning.keep_top(mask, scores, {"fc1/kernel": 6}, structure="neuron",
                     coupling=coupling)
  with pytest.raises(LotteryError, match=r"^structure: keep_top takes "
                     r"'unstructured', 'neuron' or 'head'; '2:4' fixes"):
    pruning.keep_top(mask, scores, {}, structure="2:4")


def test_residual_mlp_prunes_the_residual_stream_as_one_set():
  model = models.get("mnist1d_mlp", 10)
  params = model.init(jax.random.key(0), jnp.ones((1, 40)))["params"]
  mask = masks.make_mask(params)
  new = _np(pruning.prune(mask, jax.tree.map(jnp.abs, params), 0.2,
                          structure="neuron", coupling=model))
  fc1, fc2, out = (new[k]["kernel"] for k in ("fc1", "fc2", "out"))
  alive = fc1.any(axis=0)
  assert alive.sum() == 400
  for cut in (fc1.any(axis=0), fc2.any(axis=0), fc2.any(axis=1),
              out.any(axis=1)):
    np.testing.assert_array_equal(cut, alive)
  assert fc2.sum() == 400 * 400 and out.sum() == 400 * 10
  dead = structure.whole_units(new, structure.coupling_of(model))
  np.testing.assert_array_equal(dead["fc1+fc2"], ~alive)


def test_neuron_global_ranks_every_unit_set_together():
  model = models.get("lenet_300_100", 10)
  params = model.init(jax.random.key(0), jnp.ones((1, 784)))["params"]
  mask = masks.make_mask(params)
  scores = jax.tree.map(jnp.ones_like, params)
  new = _np(pruning.prune(mask, scores, 0.5, structure="neuron",
                          scope="layerwise", coupling=model))
  dead = structure.whole_units(new, model.coupling())
  assert {k: int(v.sum()) for k, v in dead.items()} == {"fc1": 150,
                                                        "fc2": 50}
  # 200 of the 400 units, ranked together: fc2's units score less (fewer
  # weights) and go first.
  new = _np(pruning.prune(mask, scores, 0.5, structure="neuron",
                          scope="global", coupling=model))
  dead = structure.whole_units(new, model.coupling())
  assert {k: int(v.sum()) for k, v in dead.items()} == {"fc1": 100,
                                                        "fc2": 100}


def test_neuron_needs_a_coupling(unitless):
  model = models.get(unitless, 3)
  params = model.init(jax.random.key(0), jnp.ones((1, 8)))["params"]
  mask = masks.make_mask(params)
  with pytest.raises(LotteryError, match=r"^structure: 'neuron' needs the "
                     r"coupling of model Unitless, which it does not "
                     r"declare \(a coupling\(\) method returning "
                     r"lottery.structure.Units, see "
                     r"docs/methods.md#structure\); or use 'unstructured' or "
                     r"an N:M structure$"):
    pruning.prune(mask, params, 0.2, structure="neuron", coupling=model)
  with pytest.raises(LotteryError, match=r"^structure: 'neuron' needs the "
                     r"model's coupling \(lottery.prune\(..., "
                     r"coupling=model\): "):
    pruning.prune(mask, params, 0.2, structure="neuron")


def test_unstructured_is_the_default():
  mask, scores, _ = _two_layer()
  scores = jax.tree.map(lambda x: x + np.arange(x.size).reshape(x.shape),
                        scores)
  assert leaves_equal(
      pruning.prune(mask, scores, 0.3, scope="global"),
      pruning.prune(mask, scores, 0.3, scope="global",
                    structure="unstructured"))


def _bn_neuron_pruned(name, size):
  """A width-4 BatchNorm model `name` on size x size images, its params,
  model_state and a mask with a quarter of each unit set's channels pruned."""
  model = models.get(name, 10, width=4)
  variables = jax.jit(model.init)(jax.random.key(0),
                                  jnp.ones((1, size, size, 3)))
  params = variables["params"]
  state = {"batch_stats": variables["batch_stats"]}
  new = _np(pruning.prune(masks.make_mask(params),
                          jax.tree.map(jnp.abs, params), 0.25,
                          structure="neuron", coupling=model))
  return model, params, state, new


@pytest.mark.slow
def test_vgg_prunes_whole_channels_and_bn_constants_add_nothing():
  model, params, state, new = _bn_neuron_pruned("vgg11", 32)
  assert new["bn1"]["scale"] is None
  dead = structure.whole_units(new, model.coupling())
  # Each set of the 8 convs (4..32 channels) loses round(0.25 * n) channels.
  sizes = [len(d) for d in dead.values()]
  assert [int(d.sum()) for d in dead.values()] == [
      round(0.25 * n) for n in sizes]
  for i, d in enumerate(dead.values(), start=1):
    reader = new[f"conv{i + 1}" if i < 8 else "out"]["kernel"]
    np.testing.assert_array_equal(~new[f"conv{i}"]["kernel"].any(
        axis=(0, 1, 2)), d)
    read = reader.any(axis=(0, 1, 3) if reader.ndim == 4 else 1)
    np.testing.assert_array_equal(~read, d)
  # A pruned channel's BatchNorm emits a constant that nobody reads: moving
  # its BN bias and running mean changes nothing (eval mode).
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  masked = lottery.apply_mask(new, params)
  apply = jax.jit(model.apply)  # One compilation for the three calls.
  want = apply({"params": masked, **state}, x)
  moved = jax.tree.map(np.array, masked)
  moved_state = jax.tree.map(np.array, state)
  for i, d in enumerate(dead.values(), start=1):
    moved[f"bn{i}"]["bias"][d] += 3.0
    moved_state["batch_stats"][f"bn{i}"]["mean"][d] -= 2.0
  got = apply({"params": moved, **moved_state}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert not np.allclose(apply({"params": params, **moved_state}, x), want)


@pytest.mark.slow
def test_resnet_prunes_inner_and_stream_channels():
  model, params, state, new = _bn_neuron_pruned("resnet20", 8)
  dead = structure.whole_units(new, model.coupling())
  assert len(dead) == 9 + 3
  # Widths 4, 8, 16 per stage: round(0.25 * n) channels of each block's
  # inner set and of each stage's stream go.
  assert [int(d.sum()) for d in dead.values()] == (
      [1] * 3 + [2] * 3 + [4] * 3 + [1, 2, 4])
  inner, streams = list(dead.items())[:9], list(dead.values())[9:]
  for name, d in inner:
    block = name.split("/")[0]
    conv1, conv2 = (new[block][c]["kernel"] for c in ("conv1", "conv2"))
    np.testing.assert_array_equal(~conv1.any(axis=(0, 1, 2)), d)
    np.testing.assert_array_equal(~conv2.any(axis=(0, 1, 3)), d)
  # Stage 2's stream: its projection and conv2s write it, the conv1s, the
  # next projection and nothing else read it.
  stage2 = new["stage2_block1"], new["stage2_block2"], new["stage2_block3"]
  for kernel in [stage2[0]["shortcut_conv"]["kernel"]] + [
      b["conv2"]["kernel"] for b in stage2]:
    np.testing.assert_array_equal(~kernel.any(axis=(0, 1, 2)), streams[1])
  for kernel in [b["conv1"]["kernel"] for b in stage2[1:]] + [
      new["stage3_block1"][c]["kernel"] for c in ("conv1", "shortcut_conv")]:
    np.testing.assert_array_equal(~kernel.any(axis=(0, 1, 3)), streams[1])
  np.testing.assert_array_equal(~new["out"]["kernel"].any(axis=1), streams[2])
  # The pruned channels' BatchNorm constants (bn1 inside a block; bn, bn2
  # and shortcut_bn on a stream) are not read.
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  masked = lottery.apply_mask(new, params)
  apply = jax.jit(model.apply)  # One compilation for the four calls.
  want = apply({"params": masked, **state}, x)

  def moved(tree):
    tree = jax.tree.map(np.array, tree)
    for units, d in zip(model.coupling(), dead.values()):
      for bn in units.channels:
        leaves = tree
        for part in bn.split("/"):
          leaves = leaves[part]
        leaves["bias"][d] += 3.0
    return tree

  got = apply({"params": moved(masked), **state}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Unmasked, the same moves change the output.
  assert not np.allclose(apply({"params": moved(params), **state}, x),
                         apply({"params": params, **state}, x))


def test_without_streams_keeps_the_other_units_or_refuses_in_one_line():
  resnet = models.get("resnet20", 10, width=4).coupling()
  assert [u.stream for u in resnet] == [False] * 9 + [True] * 3
  assert structure.without_streams(resnet, True) == resnet
  assert structure.without_streams(resnet, False) == resnet[:9]
  resnet50 = models.get("resnet50", 10, width=2).coupling()
  assert structure.without_streams(resnet50, False) == resnet50[:32]
  # No streams (the ViT), or no coupling: nothing to leave out.
  vit = models.get("vit_tiny", 10).coupling()
  assert structure.without_streams(vit, False) == vit
  assert structure.without_streams(None, False) is None
  # The residual MLP's one unit set is its stream.
  mlp = models.get("mnist1d_mlp", 10).coupling()
  with pytest.raises(LotteryError, match=r"^pai.residual_streams: False "
                     r"keeps every residual stream whole, and model "
                     r"'mnist1d_mlp' declares no other units; set it to "
                     r"True$"):
    structure.without_streams(mlp, False, model="'mnist1d_mlp'",
                              field="pai.residual_streams")
  with pytest.raises(LotteryError, match=r"^residual_streams: must be True "
                     r"or False \(got int 0\)$"):
    structure.without_streams(resnet, 0)


def test_residual_streams_false_applies_to_units_only():
  params = {"fc1": {"kernel": jnp.ones((4, 4))}}
  mask = masks.make_mask(params)
  for spec in ("unstructured", "2:4"):
    with pytest.raises(LotteryError, match=(
        r"^residual_streams: False leaves the residual streams out of the "
        r"units that structure='neuron' or 'head' prunes; it does not apply "
        rf"to '{spec}'$")):
      pruning.prune(mask, params, 0.5, structure=spec,
                    residual_streams=False)
  with pytest.raises(LotteryError, match=r"^residual_streams: False leaves"):
    pruning.keep_top(mask, params, {"fc1/kernel": 2},
                     residual_streams=False)


@pytest.mark.slow
def test_resnet_inner_only_prunes_round_p_n_inner_channels_under_jit():
  """With residual_streams False a ResNet loses round(p * n) of each
  block's inner channels and no stream channel; it shrinks to a network of
  full-width streams that computes what the masked one computes."""
  model = models.get("resnet20", 10, width=4)
  variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
  params = variables["params"]
  state = jax.tree.map(lambda v: v + 0.3,
                       {"batch_stats": variables["batch_stats"]})
  dense = masks.make_mask(params)
  scores = jax.tree.map(jnp.abs, params)
  prune = jax.jit(lambda m, s, streams: pruning.prune(
      m, s, 0.3, structure="neuron", coupling=model,
      residual_streams=streams), static_argnums=2)
  new = _np(prune(dense, scores, False))
  dead = structure.whole_units(new, model.coupling())
  # Inner sets of 4, 8, 16 channels: round(0.3 n) = 1, 2, 5 go; streams none.
  assert [int(d.sum()) for d in dead.values()] == (
      [1] * 3 + [2] * 3 + [5] * 3 + [0] * 3)
  # Exactly the inner channels' weights: conv1's output columns and conv2's
  # input rows (3x3 kernels); the stem, projections and 'out' stay whole.
  widths = {1: (4, 1), 2: (8, 2), 3: (16, 5)}
  for path, (kept, total) in masks.counts(new).items():
    module = path.split("/")
    if module[0] == "conv" or module[1] not in ("conv1", "conv2"):
      assert kept == total, path
      continue
    stage, conv = int(path[5]), module[1]
    c, gone = widths[stage]
    reads = 4 * 2**(stage - 2) if path.startswith(
        ("stage2_block1", "stage3_block1")) and conv == "conv1" else c
    assert total - kept == 9 * (reads if conv == "conv1" else c) * gone, path
  # With True (the default), the streams go too, as without the argument.
  both = _np(prune(dense, scores, True))
  assert leaves_equal(both, _np(pruning.prune(
      dense, scores, 0.3, structure="neuron", coupling=model)))
  assert [int(d.sum()) for d in structure.whole_units(
      both, model.coupling()).values()][9:] == [1, 2, 5]
  small, small_params, small_state = lottery.shrink(model, params, state, new)
  assert small.streams == (4, 8, 16)
  assert list(small.inner) == [3] * 3 + [6] * 3 + [11] * 3
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  np.testing.assert_allclose(
      small.apply({"params": small_params, **small_state}, x),
      model.apply({"params": lottery.apply_mask(new, params), **state}, x),
      rtol=1e-4, atol=1e-5)


def test_head_refuses_models_without_heads_in_one_line(unitless):
  for name, shape in (("conv2", (1, 8, 8, 3)), ("mlp_tiny", (1, 8))):
    model = models.get(name, 10)
    params = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.ones(shape))["params"]
    with pytest.raises(LotteryError, match=r"^structure: 'head' prunes "
                       r"attention heads, and model '" + name + r"' declares "
                       r"none \(its units are for \['neuron'\]\); use one of "
                       r"\['neuron'\], 'unstructured' or an N:M structure$"):
      structure.check_model("head", masks.make_mask(params), model, name)
  mask, scores, coupling = _two_layer()
  with pytest.raises(LotteryError, match=r"^structure: 'head' prunes "
                     r"attention heads, and the coupling declares none"):
    pruning.prune(mask, scores, 0.5, structure="head", coupling=coupling)
  model = models.get(unitless, 10)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.ones((1, 8)))["params"]
  with pytest.raises(LotteryError, match=r"^structure: 'head' needs the "
                     r"coupling of model 'unitless', which it does not "
                     r"declare \(a coupling\(\) method returning "
                     r"lottery.structure.Units, see "
                     r"docs/methods.md#structure\); or use 'unstructured' or "
                     r"an N:M structure$"):
    structure.check_model("head", masks.make_mask(params), model, "unitless")


# -- heads and units of several indices --------------------------------------

_HEAD_SCORES = np.array([5, 1, 7, 1, 9, 2, 8, 3], np.float32)


def _vit_head_scores(params):
  """Scores of a vit_tiny with 8 heads of 4: head h of block 1 scores
  _HEAD_SCORES[h] on every weight of its query, key and value columns and
  out rows, block 2 the reverse; every other weight 1."""
  scores = jax.tree.map(np.ones_like, _np(params))
  for b, u in (("block1", _HEAD_SCORES), ("block2", _HEAD_SCORES[::-1])):
    cols = np.repeat(u, 4)
    attn = scores[b]["attn"]
    for leaf in ("query", "key", "value"):
      attn[leaf]["kernel"] = np.tile(cols, (32, 1))
    attn["out"]["kernel"] = np.tile(cols[:, None], (1, 32))
  return scores


def _heads_alive(mask, block):
  """A block's live heads, checking that each head's q/k/v columns and out
  rows live or die together and nothing else of the block is pruned."""
  attn = mask[block]["attn"]
  alive = np.asarray(attn["query"]["kernel"]).any(axis=0)[::4]
  cols = np.repeat(alive, 4)
  for leaf in ("query", "key", "value"):
    np.testing.assert_array_equal(attn[leaf]["kernel"],
                                  np.tile(cols, (32, 1)))
  np.testing.assert_array_equal(attn["out"]["kernel"],
                                np.tile(cols[:, None], (1, 32)))
  for leaf in ("fc1", "fc2"):
    assert np.asarray(mask[block]["mlp"][leaf]["kernel"]).all()
  return alive


@pytest.mark.parametrize("fraction, removed", [
    (0.25, [1, 3]),  # 2 of 8; heads 1 and 3 tie at 1
    (0.3, [1, 3]),  # 2.4 rounds to 2
    (0.35, [1, 3, 5]),  # 2.8: 3
    (0.5, [1, 3, 5, 7]),
])
def test_head_removes_round_p_n_whole_heads_per_layer(fraction, removed):
  model = models.get("vit_tiny", 10, heads=8)
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 40)))["params"]
  mask = masks.make_mask(params)
  fn = jax.jit(lambda m, s: pruning.prune(m, s, fraction, structure="head",
                                          coupling=model))
  new = _np(fn(mask, _vit_head_scores(params)))
  want = np.ones(8, bool)
  want[removed] = False
  np.testing.assert_array_equal(_heads_alive(new, "block1"), want)
  np.testing.assert_array_equal(_heads_alive(new, "block2"), want[::-1])
  assert new["out"]["kernel"].all()
  dead = structure.whole_units(new, model.coupling())
  assert [int(d.sum()) for d in dead.values()] == [len(removed), 0] * 2


def test_head_keep_top_and_later_rounds_count_surviving_heads():
  model = models.get("vit_tiny", 10, heads=8)
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 40)))["params"]
  scores = _vit_head_scores(params)
  names = [u for u in structure.whole_units(masks.make_mask(params),
                                            model.coupling())
           if "attn" in u]
  assert names[0] == "block1/attn/query+block1/attn/key+block1/attn/value"
  new = _np(pruning.keep_top(masks.make_mask(params), scores,
                             {names[0]: 5, names[1]: 3}, structure="head",
                             coupling=model))
  np.testing.assert_array_equal(np.flatnonzero(_heads_alive(new, "block1")),
                                [0, 2, 4, 6, 7])
  np.testing.assert_array_equal(np.flatnonzero(_heads_alive(new, "block2")),
                                [1, 3, 5])
  # 0.5 of block 1's 5 survivors: 2.5 rounds half up to 3 more.
  again = _np(pruning.prune(new, scores, 0.5, structure="head",
                            coupling=model))
  np.testing.assert_array_equal(np.flatnonzero(_heads_alive(again, "block1")),
                                [4, 6])


def test_neuron_on_a_vit_prunes_its_mlp_units_only():
  model = models.get("vit_tiny", 10)
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 40)))["params"]
  new = _np(pruning.prune(masks.make_mask(params),
                          jax.tree.map(jnp.abs, params), 0.25,
                          structure="neuron", coupling=model))
  for b in ("block1", "block2"):
    fc1, fc2 = (new[b]["mlp"][k]["kernel"] for k in ("fc1", "fc2"))
    alive = fc1.any(axis=0)
    assert alive.sum() == 48
    np.testing.assert_array_equal(fc1, np.tile(alive, (32, 1)))
    np.testing.assert_array_equal(fc2, np.tile(alive[:, None], (1, 32)))
    assert all(np.asarray(v["kernel"]).all()
               for v in new[b]["attn"].values())


@pytest.mark.parametrize("shape, positions", [((1, 8, 8, 3), 16),
                                              ((1, 40), 20)])
def test_conv_neuron_prunes_every_channel_and_its_flatten_rows(shape,
                                                               positions):
  model = models.get("conv2", 10)
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones(shape))["params"]
  fn = jax.jit(lambda m, s: pruning.prune(m, s, 0.25, structure="neuron",
                                          coupling=model))
  new = _np(fn(masks.make_mask(params), jax.tree.map(jnp.abs, params)))
  dead = structure.whole_units(new, model.coupling())
  assert {k: int(d.sum()) for k, d in dead.items()} == {
      "conv1": 16, "conv2": 16, "fc1": 64, "fc2": 64}
  # fc1 reads the flatten of (positions, 64): channel c at rows c + 64 k.
  np.testing.assert_array_equal(
      new["fc1"]["kernel"], np.outer(np.tile(~dead["conv2"], positions),
                                     ~dead["fc1"]))
  conv2 = new["conv2"]["kernel"]
  np.testing.assert_array_equal(conv2.any(axis=tuple(range(conv2.ndim - 1))),
                                ~dead["conv2"])


def test_units_that_do_not_fit_are_refused_in_one_line():
  mask, scores, _ = _two_layer()
  # Blocks of 3 columns do not tile fc1's 10.
  with pytest.raises(LotteryError, match=r"^structure: the units of fc1 "
                     r"have different sizes in \[\('fc1/kernel', 10\), "
                     r"\('out/kernel', 10\)\]$"):
    pruning.prune(mask, scores, 0.5, structure="neuron",
                  coupling=(structure.Units(("fc1",), ("out",), block=3),))
  # 15 tiled rows are no whole number of repeats of 10 units.
  mask["out"]["kernel"] = np.ones((15, 2), bool)
  scores["out"]["kernel"] = np.ones((15, 2), np.float32)
  with pytest.raises(LotteryError, match=r"^structure: the units of fc1 "
                     r"have different sizes in \[\('fc1/kernel', 10\), "
                     r"\('out/kernel', 15\)\]$"):
    pruning.prune(mask, scores, 0.5, structure="neuron",
                  coupling=(structure.Units(("fc1",), ("out",),
                                            tiled=("out",)),))


class _ReadmeMLP(nn.Module):
  """The README's MyMLP with docs/methods.md's coupling() and
  with_widths()."""
  width: int
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.width, name="fc1")(x))
    return nn.Dense(self.num_classes, name="out")(x)

  def coupling(self):
    return (structure.Units(("fc1",), ("out",)),)

  def with_widths(self, widths):
    return self.clone(width=int(widths[0]))


def test_the_docs_own_model_takes_neuron_pruning_and_shrink():
  model = _ReadmeMLP(width=16, num_classes=10)
  params = model.init(jax.random.key(0), jnp.ones((1, 40)))["params"]
  mask = pruning.prune(masks.make_mask(params), jax.tree.map(jnp.abs, params),
                       0.75, structure="neuron", coupling=model)
  small, small_params, _ = lottery.shrink(model, params, {}, mask)
  assert small.width == 4
  x = jax.random.normal(jax.random.key(1), (8, 40))
  np.testing.assert_allclose(
      small.apply({"params": small_params}, x),
      model.apply({"params": lottery.apply_mask(mask, params)}, x),
      rtol=1e-5, atol=1e-6)


class _TypoCoupling(models.mlp.MLP):
  """An MLP whose coupling names 'fc', a module it does not have."""

  def coupling(self):
    return (structure.Units(("fc",), ("out",)),)


def test_a_coupling_naming_a_missing_module_is_refused_in_one_line(
    npz_path, tmp_path):
  model = _TypoCoupling(features=(8,), num_classes=10)
  params = model.init(jax.random.key(0), jnp.ones((1, 40)))["params"]
  mask = masks.make_mask(params)
  want = (r"the coupling of model _TypoCoupling names module 'fc', which "
          r"has no parameters \(the modules: \['fc1', 'out'\]\)$")
  with pytest.raises(LotteryError, match=r"^structure: " + want):
    pruning.prune(mask, jax.tree.map(jnp.abs, params), 0.5,
                  structure="neuron", coupling=model)
  with pytest.raises(LotteryError, match=r"^model: " + want):
    lottery.shrink(model, params, {}, mask)
  models.register("typo_coupling")(
      lambda num_classes: _TypoCoupling(features=(8,),
                                        num_classes=num_classes))
  try:
    cfg = tiny(npz_path, **{"model.name": "typo_coupling",
                            "pruning.structure": "neuron"})
    with pytest.raises(LotteryError, match=r"^pruning.structure: the "
                       r"coupling of model 'typo_coupling' names module "
                       r"'fc'"):
      lottery.driver.run(cfg, tmp_path / "wd", method=cfg.method, log=quiet)
    assert not (tmp_path / "wd").exists()
  finally:
    models.unregister("typo_coupling")


class _SplitStream(nn.Module):
  """A residual MLP whose coupling splits its stream (fc1 + fc2's output,
  read by fc2 and out) into two unit sets: shrinking a ticket then computes
  another network."""
  width: int
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(nn.Dense(self.width, name="fc1")(x))
    h = h + nn.relu(nn.Dense(self.width, name="fc2")(h))
    return nn.Dense(self.num_classes, name="out")(h)

  def coupling(self):
    return (structure.Units(("fc1",), ("fc2",)),
            structure.Units(("fc2",), ("out",)))

  def with_widths(self, widths):
    return self.clone(width=int(widths[0]))


def test_a_coupling_that_misdescribes_the_model_is_refused(npz_path,
                                                          tmp_path):
  model = _SplitStream(width=16, num_classes=3)
  params = model.init(jax.random.key(0), jnp.ones((1, 8)))["params"]
  mask = pruning.prune(masks.make_mask(params), jax.tree.map(jnp.abs, params),
                       0.5, structure="neuron", coupling=model)
  why = (r"the shrunk _SplitStream computes other outputs than the masked "
         r"one \(largest difference [0-9.e+-]+ on a probe, outputs up to "
         r"[0-9.e+-]+\): its coupling\(\) or with_widths\(\) does not "
         r"describe how its layers connect \(docs/methods.md#structure\)$")
  with pytest.raises(LotteryError, match=r"^model: " + why):
    lottery.shrink(model, params, {}, mask)
  # Outputs far below 1 (a fresh network's logits can be): the tolerance
  # is relative to them.
  tiny_params = jax.tree.map(lambda p: 0.03 * p, params)
  with pytest.raises(LotteryError, match=r"^model: " + why):
    lottery.shrink(model, tiny_params, {}, mask)
  # On given inputs too.
  with pytest.raises(LotteryError, match=r"^model: " + why):
    lottery.shrink(model, params, {}, mask, x=np.ones((3, 8), np.float32))
  # The scratch control shrinks every ticket: refused before the run.
  models.register("split_stream")(
      lambda num_classes: _SplitStream(width=16, num_classes=num_classes))
  try:
    cfg = tiny(npz_path, **{"model.name": "split_stream",
                            "pruning.structure": "neuron",
                            "controls": ("scratch",)})
    with pytest.raises(LotteryError, match=r"^controls: the 'scratch' "
                       r"control shrinks the tickets, and " + why):
      lottery.driver.run(cfg, tmp_path / "wd", method=cfg.method, log=quiet)
    assert not (tmp_path / "wd").exists()
  finally:
    models.unregister("split_stream")


# -- shrink ----------------------------------------------------------------

@pytest.mark.parametrize("name, dim", [("mlp_tiny", 8),
                                       ("lenet_300_100", 784),
                                       ("mnist1d_mlp", 40)])
def test_shrink_computes_what_the_masked_model_computes(name, dim):
  model = models.get(name, 10)
  params = model.init(jax.random.key(0), jnp.ones((1, dim)))["params"]
  # Nonzero biases: a removed unit's constant activation must be folded.
  params = jax.tree.map(lambda x: x + 0.05, params)
  mask = masks.make_mask(params)
  x = jax.random.normal(jax.random.key(1), (16, dim))
  scores = jax.tree.map(jnp.abs, params)
  for m in (pruning.prune(mask, scores, 0.6, structure="neuron",
                          coupling=model),
            pruning.prune(mask, scores, 0.99),
            pruning.prune(mask, scores, 0.999, scope="global")):
    small, small_params, state = lottery.shrink(model, params, {}, m)
    assert state == {}
    want = model.apply({"params": lottery.apply_mask(m, params)}, x)
    got = small.apply({"params": small_params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    dead = structure.whole_units(m, model.coupling())
    widths = [int((~d).sum()) for d in dead.values()]
    if hasattr(small, "features"):
      assert all(w <= max(k, 1) for w, k in zip(small.features, widths))
  neuron = pruning.prune(mask, scores, 0.5, structure="neuron",
                         coupling=model)
  small, _, _ = lottery.shrink(model, params, {}, neuron)
  want = [int((~d).sum()) for d in
          structure.whole_units(neuron, model.coupling()).values()]
  got = list(small.features) if hasattr(small, "features") else [
      small.hidden]
  assert got == want


@pytest.mark.slow
def test_shrink_vgg_computes_what_the_masked_vgg_computes():
  model = models.get("vgg11", 10, width=4)
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  params, state = variables["params"], {"batch_stats":
                                        variables["batch_stats"]}
  # Running stats that are not the init's, so that slicing them matters.
  state = jax.tree.map(lambda v: v + 0.3, state)
  mask = masks.make_mask(params)
  scores = jax.tree.map(jnp.abs, params)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  for m in (pruning.prune(mask, scores, 0.4, structure="neuron",
                          coupling=model),
            pruning.prune(mask, scores, 0.9)):
    small, small_params, small_state = lottery.shrink(model, params, state, m)
    want = model.apply({"params": lottery.apply_mask(m, params), **state}, x)
    got = small.apply({"params": small_params, **small_state}, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  neuron = pruning.prune(mask, scores, 0.4, structure="neuron",
                         coupling=model)
  small, small_params, small_state = lottery.shrink(model, params, state,
                                                    neuron)
  want = [int((~d).sum()) for d in
          structure.whole_units(neuron, model.coupling()).values()]
  assert [c for c in small.plan if c != "M"] == want
  assert small_state["batch_stats"]["bn1"]["mean"].shape == (want[0],)


def test_shrink_refuses_models_without_units(unitless):
  model = models.get(unitless, 3)
  params = model.init(jax.random.key(0), jnp.ones((1, 8)))["params"]
  with pytest.raises(LotteryError, match="^model: shrink needs a model that "
                     "declares its units .* Unitless does not$"):
    lottery.shrink(model, params, {}, masks.make_mask(params))
  # A model that declares its units but has no smaller form.
  model = _DeclaresUnits()
  params = model.init(jax.random.key(0), jnp.ones((1, 8)))["params"]
  with pytest.raises(LotteryError, match="^model: shrink needs a model that "
                     "can rebuild itself .* _DeclaresUnits declares its units "
                     "but cannot$"):
    lottery.shrink(model, params, {}, masks.make_mask(params))


def test_shrink_refuses_another_models_params():
  # A ticket of the MNIST-1D MLP (residual, 500 units) shrunk with a model
  # of the same module names but other widths, classes or layers: each would
  # have built a network computing something else.
  ticket = models.get("mnist1d_mlp", 10)
  params = ticket.init(jax.random.key(0), jnp.ones((1, 40)))["params"]
  mask = masks.make_mask(params)
  for other, message in [
      (models.get("lenet_300_100", 10),
       r"^params: fc1/bias has 500 outputs where this MLP has 300: they are "
       r"another model's$"),
      (models.get("mnist1d_mlp", 5),
       r"^params: out/bias has 10 outputs where this ResidualMLP has 5"),
      (models.get("conv2", 10),
       r"^params: not this ConvNet's \(no conv1, its input layer\)$")]:
    with pytest.raises(LotteryError, match=message):
      lottery.shrink(other, params, {}, mask)
  # Its own model shrinks; a model_state of None is an empty one.
  assert lottery.shrink(ticket, params, None, mask)[2] == {}


class _DeclaresUnits(nn.Module):
  """A model with a coupling and no `with_widths`."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="out")(nn.relu(nn.Dense(4, name="fc1")(x)))

  def coupling(self):
    return (structure.Units(("fc1",), ("out",)),)


@pytest.mark.parametrize("name, options, scope, fraction", [
    pytest.param("resnet20", {}, "layerwise", 0.5, marks=pytest.mark.slow),
    # Magnitude sums rank the wide stream units last: at 90% the global
    # prune empties stage 1's stream (one silent channel stays) and most of
    # stage 3's, and every inner set.
    ("resnet20", {}, "global", 0.9),
    pytest.param("resnet50", {"width": 4}, "layerwise", 0.5,
                 marks=pytest.mark.slow),
])
def test_shrink_resnets_computes_what_the_masked_resnet_computes(
    name, options, scope, fraction):
  """The ResNets shrink their blocks' inner channels (conv1 with bn1;
  ResNet-50's conv2 with bn2 too) and their residual streams (every conv
  that adds into a stream, its BatchNorm, every conv that reads it)."""
  model = models.get(name, 10, **options)
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  params = variables["params"]
  state = jax.tree.map(lambda v: v + 0.3,
                       {"batch_stats": variables["batch_stats"]})
  mask = pruning.prune(masks.make_mask(params), jax.tree.map(jnp.abs, params),
                       fraction, structure="neuron", coupling=model,
                       scope=scope)
  small, small_params, small_state = lottery.shrink(model, params, state,
                                                    mask)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  want = model.apply({"params": lottery.apply_mask(mask, params), **state}, x)
  got = small.apply({"params": small_params, **small_state}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  kept = [max(int((~d).sum()), 1) for d in
          structure.whole_units(mask, model.coupling()).values()]
  n = len(small.inner)
  assert list(small.inner) + list(small.streams) == kept
  full = [len(d) for d in structure.whole_units(
      masks.make_mask(params), model.coupling()).values()]
  assert list(small.streams) != full[n:]  # narrower streams
  block = small_params["stage1_block1"]
  # Its input: stage 1's stream (ResNet-20) or the stem's (ResNet-50).
  assert block["conv1"]["kernel"].shape[-2:] == (kept[n], kept[0])
  assert block["conv2"]["kernel"].shape[-2] == kept[0]
  assert small_state["batch_stats"]["stage1_block1"]["bn1"]["mean"].shape == (
      kept[0],)
  assert small_params["out"]["kernel"].shape[0] == kept[-1]
  assert small_state["batch_stats"]["bn"]["mean"].shape == (kept[n],)


def test_resnet_widths_are_inner_then_streams_or_refused_in_one_line():
  model = models.get("resnet20", 10, width=4)
  assert model.with_widths([2] * 9).streams is None  # the streams as built
  assert model.with_widths([2] * 9 + [3, 5, 7]).streams == (3, 5, 7)
  with pytest.raises(LotteryError, match=r"^model: resnet takes 9 inner "
                     r"widths and 3 stream widths \(got 10 widths\)$"):
    model.with_widths([2] * 10)


def test_resnet_neuron_refuses_a_stream_reader_that_is_not_prunable():
  """A stream channel's BatchNorm constant reaches every reader: one whose
  kernel is not prunable keeps it (here 'out', after the pooling)."""
  model = models.get("resnet20", 10, width=4)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.ones((1, 8, 8, 3)))["params"]
  mask = masks.make_mask(params, prunable=(r"stage.*kernel", r"conv/kernel"))
  with pytest.raises(LotteryError, match=r"^structure: 'neuron' removes the "
                     r"units of stage3_block1/shortcut_conv\+.* with the input "
                     r"rows of out/kernel, which is not prunable; add it to "
                     r"the prunable weights$"):
    structure.check_model("neuron", mask, model, "resnet20")


# -- group criteria --------------------------------------------------------

def _mlp_taylor_units(params, x, y):
  """|sum of g * w| over each hidden unit of an MLP fc1 -> relu -> out (its
  fc1 column and its out row; biases not prunable), g the gradient of the
  mean cross-entropy, backpropagated by hand in float64."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  w1, b1 = p["fc1"]["kernel"], p["fc1"]["bias"]
  w2, b2 = p["out"]["kernel"], p["out"]["bias"]
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  pre = x @ w1 + b1
  h = np.maximum(pre, 0)
  logits = h @ w2 + b2
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  d = e / e.sum(axis=1, keepdims=True)
  d[np.arange(len(y)), np.asarray(y)] -= 1
  d /= len(y)
  g2 = h.T @ d
  g1 = x.T @ ((d @ w2.T) * (pre > 0))
  return np.abs((g1 * w1).sum(axis=0) + (g2 * w2).sum(axis=1))


def _lowest(scores, k):
  """The k lowest-scoring units (ties by index), after checking that the
  k-th and (k+1)-th are far apart for float32 to rank them alike."""
  order = np.argsort(scores, kind="stable")
  lo, hi = scores[order[k - 1]], scores[order[k]]
  assert hi - lo > 1e-4 * max(hi, 1e-6), (lo, hi)
  return sorted(order[:k].tolist())


def _dead_fc1(mask):
  return np.flatnonzero(structure.whole_units(
      mask, models.get("mlp_tiny", 3).coupling())["fc1"]).tolist()


def test_taylor_criterion_is_the_abs_of_the_summed_signed_terms():
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), jnp.ones((1, 8)))["params"]
  params["fc1"]["bias"] = jnp.full(32, 0.1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 8)).astype(np.float32)
  y = rng.integers(0, 3, 20)
  apply_fn = lambda p, xs: model.apply({"params": p}, xs)
  want = _mlp_taylor_units(params, x, y)
  terms = lottery.scores.taylor_terms(apply_fn, params, (x, y))
  k1, k2 = np.asarray(terms["fc1"]["kernel"]), np.asarray(terms["out"]["kernel"])
  np.testing.assert_allclose(np.abs(k1.sum(axis=0) + k2.sum(axis=1)), want,
                             rtol=1e-4, atol=1e-7)
  # The sign matters: the sum of |g * w| ranks the units otherwise.
  l1 = np.abs(k1).sum(axis=0) + np.abs(k2).sum(axis=1)
  assert _lowest(want, 16) != _lowest(l1, 16)
  mask = masks.make_mask(params)

  @jax.jit
  def prune(m, p, batch):
    s = lottery.scores.for_criterion("taylor", apply_fn, p, m, batch)
    return pruning.prune(m, s, 0.5, structure="neuron", group_score="taylor",
                         coupling=model)

  assert _dead_fc1(_np(prune(mask, params, (x, y)))) == _lowest(want, 16)
  # Eagerly, and the reductions of the same terms are not it.
  eager = pruning.prune(mask, terms, 0.5, structure="neuron",
                        group_score="taylor", coupling=model)
  assert _dead_fc1(_np(eager)) == _lowest(want, 16)
  assert _dead_fc1(_np(pruning.prune(mask, terms, 0.5, structure="neuron",
                                     group_score="l1", coupling=model))) == \
      _lowest(l1, 16)


def test_bn_scale_criterion_sums_abs_gamma_over_channel_modules():
  # Units of fc1 (4) with two BatchNorm channel modules, neither prunable:
  # unit scores |a| + |b| = 3.5, 1, 2.5, 1.5 (unit 1: 0.5 + 0.5); the
  # weights' own scores (all 9) do not count.
  coupling = (structure.Units(("fc1",), ("out",), ("bn_a", "bn_b")),)
  mask = {"fc1": {"kernel": np.ones((3, 4), bool)},
          "bn_a": {"scale": None, "bias": None},
          "bn_b": {"scale": None},
          "out": {"kernel": np.ones((4, 2), bool)}}
  scores = {"fc1": {"kernel": np.full((3, 4), 9.0, np.float32)},
            "bn_a": {"scale": np.array([3, -0.5, 2, -1], np.float32),
                     "bias": np.zeros(4, np.float32)},
            "bn_b": {"scale": np.array([-0.5, 0.5, 0.5, 0.5], np.float32)},
            "out": {"kernel": np.full((4, 2), 9.0, np.float32)}}
  for fn in (pruning.prune, jax.jit(pruning.prune, static_argnames=(
      "fraction", "structure", "group_score", "coupling"))):
    new = _np(fn(mask, scores, fraction=0.5, structure="neuron",
                 group_score="bn_scale", coupling=coupling))
    np.testing.assert_array_equal(new["fc1"]["kernel"].any(axis=0),
                                  [True, False, True, False])
  new = _np(pruning.keep_top(mask, scores, {"fc1": 3}, structure="neuron",
                             group_score="bn_scale", coupling=coupling))
  np.testing.assert_array_equal(new["fc1"]["kernel"].any(axis=0),
                                [True, False, True, True])
  with pytest.raises(LotteryError, match=r"^group_score: 'bn_scale' scores a "
                     r"unit by the scale of its BatchNorm channel, but the "
                     r"units of fc1 have none"):
    pruning.prune(mask, scores, 0.5, structure="neuron",
                  group_score="bn_scale",
                  coupling=(structure.Units(("fc1",), ("out",)),))
  with pytest.raises(LotteryError, match=r"^scores: 'bn_scale' reads "
                     r"bn_b/scale from the scores"):
    pruning.prune(mask, {**scores, "bn_b": {"scale": np.zeros(3)}}, 0.5,
                  structure="neuron", group_score="bn_scale",
                  coupling=coupling)


def test_imp_taylor_prunes_the_units_hand_computed_on_its_batch(npz_path,
                                                                tmp_path):
  # Two replicates: pruned in one vmapped call, each on its own batch.
  cfg = tiny(npz_path, **{"pruning.structure": "neuron", "pruning.rounds": 1,
                          "pruning.group_score": "taylor", "seeds.num": 2,
                          "pruning.batch_size": 50, "controls": ()})
  lottery.run(cfg, tmp_path, log=quiet)
  exp = lottery.build(cfg)
  for i in range(2):
    trained = lottery.load_ticket(tmp_path, 0, "ticket",
                                  seed=i).trained_params
    x, y = lottery.imp._score_batch(cfg, exp, i, 1)  # pylint: disable=protected-access
    assert len(y) == 50
    want = _lowest(_mlp_taylor_units(trained, x, y), 16)
    mask = lottery.load_ticket(tmp_path, 1, "ticket", seed=i).mask
    assert _dead_fc1(mask) == want, i


def test_imp_taylor_traces_its_scoring_once_for_rounds_at_one_rate(
    npz_path, tmp_path, monkeypatch):
  # Three rounds at the constant fraction: one compiled scoring program.
  traced = []
  real = lottery.scores.for_criterion

  def counted(*args, **kwargs):
    traced.append(args[0])
    return real(*args, **kwargs)

  monkeypatch.setattr(lottery.imp.scores_lib, "for_criterion", counted)
  cfg = tiny(npz_path, **{"pruning.structure": "neuron", "pruning.rounds": 3,
                          "pruning.group_score": "taylor",
                          "pruning.batch_size": 50, "controls": (),
                          "training.steps": 5})
  summary = lottery.run(cfg, tmp_path, log=quiet)
  assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
  assert traced == ["taylor"]


def test_pai_taylor_prunes_the_units_hand_computed_on_the_init(npz_path,
                                                               tmp_path):
  cfg = tiny(npz_path, method="pai", **{
      "pai.methods": ("magnitude",), "pai.densities": (0.5,),
      "pai.checks": ("reinit",), "pai.dense": False,
      "pai.structure": "neuron", "pai.group_score": "taylor"})
  lottery.pai.run(cfg, tmp_path, log=quiet)
  exp = lottery.build(cfg)
  x, y = pai.score_batch(exp, 0)
  want = _lowest(_mlp_taylor_units(exp.init_params, x, y), 16)
  mask = lottery.load_ticket(tmp_path, method="magnitude", check=None,
                             target_density=0.5, seed=0).mask
  assert _dead_fc1(mask) == want


@pytest.mark.slow
def test_imp_bn_scale_prunes_the_channels_of_smallest_gamma(tmp_path):
  rng = np.random.default_rng(0)
  images = lambda n: rng.normal(size=(n, 16, 16, 3)).astype(np.float32)
  path = tmp_path / "images.npz"
  np.savez(path, x_train=images(32), y_train=rng.integers(0, 3, 32),
           x_test=images(16), y_test=rng.integers(0, 3, 16))
  cfg = tiny(str(path), **{"model.name": "vgg11", "model.width": 4,
                           "pruning.structure": "neuron", "pruning.rounds": 1,
                           "pruning.group_score": "bn_scale",
                           "training.steps": 4, "training.eval_every": 4,
                           "training.checkpoint_every": 4, "controls": ()})
  lottery.run(cfg, tmp_path / "run", log=quiet)
  trained = lottery.load_ticket(tmp_path / "run", 0, "ticket").trained_params
  dead = structure.whole_units(
      lottery.load_ticket(tmp_path / "run", 1, "ticket").mask,
      models.get("vgg11", 3, width=4).coupling())
  for i, (name, d) in enumerate(dead.items(), start=1):
    gamma = np.abs(np.asarray(trained[f"bn{i}"]["scale"]))
    assert name == f"conv{i}"
    assert np.flatnonzero(d).tolist() == _lowest(gamma, len(gamma) // 2), i


@pytest.mark.parametrize("overrides, match", [
    ({"pruning.group_score": "taylor"}, r"^pruning.group_score: 'taylor' "
     r"scores whole units: it needs pruning.structure='neuron' or 'head' "
     r"\(got 'unstructured'\)$"),
    ({"pruning.group_score": "bn_scale", "pruning.structure": "neuron"},
     r"^pruning.group_score: 'bn_scale' scores a unit by the scale of its "
     r"BatchNorm channel, but the units of fc1 of model 'mlp_tiny' have "
     r"none; use one of \['sum', 'l1', 'l2', 'taylor'\]$"),
    ({"pruning.group_score": "taylor", "pruning.structure": "neuron",
      "pruning.batch_size": 1000}, r"^pruning.batch_size: 1000 exceeds the "
     r"256 training examples"),
    ({"method": "pai", "pai.group_score": "taylor", "pai.structure":
      "neuron"}, r"^pai.group_score: scores the units in place of a method's "
     r"scores, .* set pai.methods to one method"),
    ({"method": "pai", "pai.group_score": "taylor", "pai.structure": "neuron",
      "pai.methods": ("snip",)}, r"^pai.group_score: ranks units by its own "
     r"unit scores, .*leave 'invert' out of pai.checks"),
    ({"method": "pai", "pai.group_score": "bn_scale", "pai.structure":
      "2:4", "pai.densities": (0.5,)}, r"^pai.group_score: 'bn_scale' scores "
     r"whole units: it needs pai.structure='neuron' or 'head'"),
])
def test_group_criteria_config_refusals(npz_path, tmp_path, overrides,
                                        match):
  cfg = tiny(npz_path, **overrides)
  with pytest.raises(LotteryError, match=match):
    lottery.driver.run(cfg, tmp_path / "wd", method=cfg.method, log=quiet)
  assert not (tmp_path / "wd").exists() or not any(
      (tmp_path / "wd").iterdir())


def test_group_criteria_config_accepted(npz_path):
  for overrides in ({"pruning.structure": "neuron",
                     "pruning.group_score": "taylor"},
                    {"pruning.structure": "neuron",
                     "pruning.group_score": "bn_scale",
                     "model.name": "vgg11"},
                    {"method": "pai", "pai.structure": "neuron",
                     "pai.group_score": "taylor", "pai.methods": ("snip",),
                     "pai.checks": ("shuffle", "reinit")}):
    lottery.config.validate(tiny(npz_path, **overrides))


# -- in runs ---------------------------------------------------------------

def test_imp_neuron_run_prunes_whole_units(npz_path, tmp_path):
  cfg = tiny(npz_path, **{"pruning.structure": "neuron",
                          "pruning.group_score": "l2", "controls": ()})
  summary = lottery.run(cfg, tmp_path, log=quiet)
  coupling = models.get("mlp_tiny", 3).coupling()
  # mlp_tiny's 32 units: 16 go in round 1, 8 of 16 in round 2.
  for r, alive in ((0, 32), (1, 16), (2, 8)):
    t = lottery.load_ticket(tmp_path, r, "ticket")
    dead = structure.whole_units(t.mask, coupling)["fc1"]
    assert (~dead).sum() == alive
    kernel = np.asarray(t.mask["fc1"]["kernel"])
    out = np.asarray(t.mask["out"]["kernel"])
    np.testing.assert_array_equal(kernel, np.tile(~dead, (8, 1)))
    np.testing.assert_array_equal(out, np.tile(~dead[:, None], (1, 3)))
    assert summary["rounds"][r]["density"] == alive / 32


@pytest.mark.slow
def test_imp_neuron_run_on_a_tiny_vgg(tmp_path):
  rng = np.random.default_rng(0)
  images = lambda n: rng.normal(size=(n, 16, 16, 3)).astype(np.float32)
  labels = lambda n: rng.integers(0, 3, n)
  path = tmp_path / "images.npz"
  np.savez(path, x_train=images(32), y_train=labels(32), x_test=images(16),
           y_test=labels(16))
  cfg = tiny(str(path), **{"model.name": "vgg11", "model.width": 4,
                           "pruning.structure": "neuron", "pruning.rounds": 1,
                           "training.steps": 2, "training.eval_every": 2,
                           "training.checkpoint_every": 2, "controls": ()})
  lottery.run(cfg, tmp_path / "run", log=quiet)
  t = lottery.load_ticket(tmp_path / "run", 1, "ticket")
  dead = structure.whole_units(t.mask, models.get("vgg11", 3,
                                                  width=4).coupling())
  # Half of each conv's channels (4, 8, 16, 16, 32, 32, 32, 32) go.
  assert [int(d.sum()) for d in dead.values()] == [2, 4, 8, 8, 16, 16, 16, 16]


def test_imp_neuron_replicates_prune_each_on_its_own(npz_path, tmp_path):
  # Several replicates prune in one vmapped call.
  cfg = tiny(npz_path, **{"pruning.structure": "neuron", "pruning.rounds": 1,
                          "seeds.num": 2, "controls": ()})
  lottery.run(cfg, tmp_path / "two", log=quiet)
  one = tiny(npz_path, **{"pruning.structure": "neuron", "pruning.rounds": 1,
                          "controls": ()})
  lottery.run(one, tmp_path / "one", log=quiet)
  coupling = models.get("mlp_tiny", 3).coupling()
  masks_ = [lottery.load_ticket(tmp_path / "two", 1, "ticket", seed=i).mask
            for i in range(2)]
  for m in masks_:
    assert (~structure.whole_units(m, coupling)["fc1"]).sum() == 16
  assert not leaves_equal(masks_[0], masks_[1])
  assert leaves_equal(masks_[0],
                      lottery.load_ticket(tmp_path / "one", 1, "ticket").mask)


def test_a_resumed_structured_run_is_bit_identical(npz_path, tmp_path,
                                                   monkeypatch):
  cfg = tiny(npz_path, **{"pruning.structure": "neuron",
                          "controls": ("random_prune",)})
  lottery.run(cfg, tmp_path / "ref", log=quiet)
  assert run_interrupted(
      lambda: lottery.run(cfg, tmp_path / "run", log=quiet), monkeypatch,
      saves=(3,), finishes=(2,)) == 2
  for r in range(3):
    for kind in (("ticket",) if r == 0 else ("ticket", "random_prune")):
      a = lottery.load_ticket(tmp_path / "ref", r, kind)
      b = lottery.load_ticket(tmp_path / "run", r, kind)
      for f in ("mask", "rewind_params", "trained_params"):
        assert leaves_equal(getattr(a, f), getattr(b, f)), (r, kind, f)


class _StreamMLP(nn.Module):
  """A residual MLP with an inner layer: a stream of 16 units (fc0's and
  fc2's outputs, added) read by fc1 (8 inner units) and 'out'."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    h = nn.relu(nn.Dense(16, name="fc0")(x.reshape((x.shape[0], -1))))
    h = h + nn.Dense(16, name="fc2")(nn.relu(nn.Dense(8, name="fc1")(h)))
    return nn.Dense(self.num_classes, name="out")(h)

  def coupling(self):
    return (structure.Units(("fc1",), ("fc2",)),
            structure.Units(("fc0", "fc2"), ("fc1", "out"), stream=True))


@pytest.fixture
def stream_mlp():
  models.register("stream_mlp")(lambda num_classes: _StreamMLP(num_classes))
  yield "stream_mlp"
  models.unregister("stream_mlp")


def test_keep_top_without_streams_counts_the_other_sets_only():
  model = _StreamMLP(3)
  params = model.init(jax.random.key(0), jnp.ones((1, 8)))["params"]
  mask, scores = masks.make_mask(params), jax.tree.map(jnp.abs, params)
  keep = jax.jit(lambda m, s: pruning.keep_top(
      m, s, {"fc1": 3}, structure="neuron", coupling=model,
      residual_streams=False))
  dead = structure.whole_units(keep(mask, scores), model.coupling())
  assert [int(d.sum()) for d in dead.values()] == [5, 0]
  with pytest.raises(LotteryError, match=r"^counts: no keep count for "
                     r"fc0\+fc2"):
    pruning.keep_top(mask, scores, {"fc1": 3}, structure="neuron",
                     coupling=model)


@pytest.mark.parametrize("streams, dead", [(True, [4, 8]), (False, [4, 0])])
def test_imp_and_pai_honour_residual_streams(npz_path, tmp_path, stream_mlp,
                                             streams, dead):
  imp_cfg = tiny(npz_path, **{"model.name": stream_mlp,
                              "pruning.structure": "neuron",
                              "pruning.rounds": 1, "controls": (),
                              "pruning.residual_streams": streams})
  lottery.run(imp_cfg, tmp_path / "imp", log=quiet)
  pai_cfg = tiny(npz_path, method="pai", **{
      "model.name": stream_mlp, "pai.methods": ("magnitude",),
      "pai.densities": (0.5,), "pai.checks": (), "pai.dense": False,
      "pai.structure": "neuron", "pai.scope": "layerwise",
      "pai.residual_streams": streams})
  lottery.pai.run(pai_cfg, tmp_path / "pai", log=quiet)
  coupling = _StreamMLP(3).coupling()
  for mask in (lottery.load_ticket(tmp_path / "imp", 1, "ticket").mask,
               lottery.load_ticket(tmp_path / "pai", method="magnitude",
                                   check=None, target_density=0.5,
                                   seed=0).mask):
    # Half of the 8 inner units go, and half of the 16 stream units or none.
    assert [int(d.sum()) for d in structure.whole_units(
        mask, coupling).values()] == dead
    assert np.asarray(mask["fc0"]["kernel"]).all() == (not streams)


def test_imp_n_m_run_keeps_n_of_m(npz_path, tmp_path):
  cfg = tiny(npz_path, **{"pruning.structure": "2:4", "pruning.rounds": 1,
                          "controls": ()})
  summary = lottery.run(cfg, tmp_path, log=quiet)
  mask = lottery.load_ticket(tmp_path, 1, "ticket").mask
  for leaf in ("fc1", "out"):
    k = np.asarray(mask[leaf]["kernel"])
    assert (k.reshape(-1, 4, k.shape[1]).sum(axis=1) == 2).all()
  assert summary["rounds"][1]["density"] == 0.5


def test_pai_n_m_keeps_n_of_m(npz_path, tmp_path):
  cfg = tiny(npz_path, method="pai", **{
      "pai.methods": ("magnitude", "snip"), "pai.densities": (0.25,),
      "pai.checks": (), "pai.dense": False, "pai.structure": "1:4"})
  lottery.pai.run(cfg, tmp_path, log=quiet)
  for method in ("magnitude", "snip"):
    mask = lottery.load_ticket(tmp_path, method=method, check=None,
                               target_density=0.25, seed=0).mask
    k = np.asarray(mask["fc1"]["kernel"])
    assert (k.reshape(2, 4, 32).sum(axis=1) == 1).all()


@pytest.mark.parametrize("overrides, match", [
    ({"pruning.structure": "4:2"}, r"^pruning.structure: an N:M structure "
     r"needs 0 < N < M \(got '4:2'\)$"),
    ({"pruning.structure": "blocks"}, r"^pruning.structure: unknown "
     r"structure, must be one of \['unstructured', 'neuron', 'head', "
     r"'N:M'\]"),
    ({"pruning.structure": "2:4"}, r"^pruning.structure: prunes once .* set "
     r"pruning.rounds to 1"),
    ({"pruning.structure": "2:4", "pruning.rounds": 1,
      "pruning.layer_fractions": "out/kernel=0.1"}, r"^pruning.structure: "
     r"takes no pruning.layer_fractions \(N:M keeps N of every M in every "
     r"layer\): set it to '', not 'out/kernel=0.1' \(got '2:4'\)$"),
    ({"pruning.structure": "2:4"}, r"^pruning.structure: prunes once \(round "
     r"1 keeps 2 of every 4\); set pruning.rounds to 1, not 2 \(got '2:4'\)$"),
    ({"pruning.group_score": "mean"}, r"^pruning.group_score: must be one of "
     r"\['sum', 'l1', 'l2', 'taylor', 'bn_scale'\]"),
    ({"method": "pai", "pai.structure": "2:4"}, r"^pai.structure: keeps 2 of "
     r"every 4: set pai.densities to \(0.5,\)"),
    ({"method": "pai", "pai.structure": "neuron", "pai.densities": (0.01,)},
     r"^pai.densities: 0.01 keeps no unit of its 1 unit set\(s\) together "
     r"\(32 units, pai.structure 'neuron', pai.scope 'global', .*\); use a "
     r"higher density$"),
    ({"method": "pai", "model.name": "vit_tiny", "pai.structure": "head",
      "pai.densities": (0.01,)},
     r"^pai.densities: 0.01 keeps no unit of its 2 unit set\(s\) together "
     r"\(8 units, pai.structure 'head', pai.scope 'global', .*\); use a "
     r"higher density$"),
    ({"method": "pai", "pai.structure": "neuron", "pai.scope": "layerwise",
      "pai.densities": (0.5, 0.01)},
     r"^pai.densities: 0.01 keeps no unit of fc1 \(32 units"),
    ({"pruning.residual_streams": False}, r"^pruning.residual_streams: False "
     r"leaves the residual streams out of the units that "
     r"pruning.structure='neuron' or 'head' prunes; it does not apply to "
     r"'unstructured'$"),
    ({"method": "pai", "pai.structure": "2:4", "pai.densities": (0.5,),
      "pai.residual_streams": False}, r"^pai.residual_streams: False leaves "
     r"the residual streams out of the units that pai.structure='neuron' or "
     r"'head' prunes; it does not apply to '2:4'$"),
])
def test_config_refuses_bad_structures(npz_path, tmp_path, overrides, match):
  with pytest.raises(LotteryError, match=match):
    cfg = tiny(npz_path, **overrides)
    lottery.driver.run(cfg, tmp_path / "wd", method=cfg.method, log=quiet)
  assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("model, overrides, match", [
    ("conv2", {"pruning.structure": "head"},
     r"^pruning.structure: 'head' prunes attention heads, and model 'conv2' "
     r"declares none \(its units are for \['neuron'\]\); use one of "
     r"\['neuron'\], 'unstructured' or an N:M structure$"),
    ("conv2", {"pruning.structure": "2:4", "pruning.rounds": 1},
     r"^pruning.structure: '2:4' groups 4 weights along axis 1 of "
     r"conv1/kernel \(shape \(3, 1, 64\)\), whose length 1 is not a "
     r"multiple of 4$"),
    ("conv2", {"method": "pai", "pai.structure": "head"},
     r"^pai.structure: 'head' prunes attention heads, and model 'conv2'"),
    ("unitless", {"pruning.structure": "neuron"},
     r"^pruning.structure: 'neuron' needs the coupling of model 'unitless', "
     r"which it does not declare \(a coupling\(\) method returning "
     r"lottery.structure.Units, see docs/methods.md#structure\); or use "
     r"'unstructured' or an N:M structure$"),
    # Its one unit set is a residual stream.
    ("mnist1d_mlp", {"pruning.structure": "neuron",
                     "pruning.residual_streams": False},
     r"^pruning.residual_streams: False keeps every residual stream whole, "
     r"and model 'mnist1d_mlp' declares no other units; set it to True$"),
    ("mnist1d_mlp", {"method": "pai", "pai.structure": "neuron",
                     "pai.residual_streams": False},
     r"^pai.residual_streams: False keeps every residual stream whole, "
     r"and model 'mnist1d_mlp' declares no other units; set it to True$"),
])
def test_a_structure_the_model_cannot_take_is_refused_before_writing(
    npz_path, tmp_path, unitless, model, overrides, match):
  cfg = tiny(npz_path, **{"model.name": model, **overrides})
  with pytest.raises(LotteryError, match=match):
    lottery.driver.run(cfg, tmp_path / "wd", method=cfg.method, log=quiet)
  assert not (tmp_path / "wd").exists() or not any(
      (tmp_path / "wd").iterdir())


def test_pai_prune_at_init_neuron_keeps_unit_densities(npz_path):
  cfg = tiny(npz_path, method="pai", **{"pai.structure": "neuron"})
  exp = lottery.build(cfg)
  batch = pai.score_batch(exp, 0)
  mask = pai.prune_at_init(exp, "snip", 0.25, exp.init_params,
                           exp.init_model_state, batch, jax.random.key(0),
                           structure="neuron")
  dead = structure.whole_units(mask, exp.model.coupling())["fc1"]
  assert (~dead).sum() == 8


def test_pai_prune_at_init_head_keeps_head_densities(npz_path):
  cfg = tiny(npz_path, method="pai", **{"model.name": "vit_tiny",
                                        "pai.structure": "head"})
  exp = lottery.build(cfg)
  batch = pai.score_batch(exp, 0)
  mask = pai.prune_at_init(exp, "snip", 0.5, exp.init_params,
                           exp.init_model_state, batch, jax.random.key(0),
                           structure="head", scope="layerwise")
  dead = structure.whole_units(mask, exp.model.coupling())
  assert [int((~d).sum()) for d in dead.values()] == [2, 64, 2, 64]


def test_shrink_keeps_a_silent_residual_unit_that_is_still_read():
  """A unit of the residual stream whose fc1 and fc2 columns are masked but
  whose fc2 row is not: fc2 reads relu(b1), out relu(b1) + relu(b2); the
  unit stays and the outputs agree."""
  model = models.get("mnist1d_mlp", 10)
  params = model.init(jax.random.key(0), jnp.ones((1, 40)))["params"]
  params = jax.tree.map(lambda x: x + 0.5, params)  # Positive biases.
  mask = jax.tree.map(np.array, masks.make_mask(params))
  for layer in ("fc1", "fc2"):
    mask[layer]["kernel"][:, 0] = False
  x = jax.random.normal(jax.random.key(1), (8, 40))
  small, small_params, _ = lottery.shrink(model, params, {}, mask)
  want = model.apply({"params": lottery.apply_mask(mask, params)}, x)
  got = small.apply({"params": small_params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_neuron_refuses_a_consumer_that_is_not_prunable():
  params = models.get("mlp_tiny", 3).init(jax.random.key(0),
                                          jnp.ones((1, 8)))["params"]
  mask = masks.make_mask(params, (r"fc\d+/kernel",))  # 'out' not prunable.
  scores = jax.tree.map(jnp.abs, params)
  with pytest.raises(LotteryError, match=r"^structure: 'neuron' removes the "
                     r"units of fc\d with the input rows of .*/kernel, which "
                     r"is not prunable"):
    pruning.prune(mask, scores, 0.5, structure="neuron",
                  coupling=models.get("mlp_tiny", 3))
