"""lottery.models.vit: the Vision Transformer's shapes, parameters, units
and refusals, and an IMP run that prunes its heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import masks
from lottery import models
from lottery import structure
from lottery.errors import LotteryError
from lottery.models import vit

from conftest import quiet
from experiments import cli


@pytest.mark.parametrize("shape, tokens, patch_values", [
    ((3, 40), 10, 4),  # MNIST-1D: 1-D patches of 4 samples.
    ((3, 32, 32, 3), 64, 48),  # CIFAR: 4 x 4 x 3 patches.
    ((3, 12, 2), 3, 8),  # Sequences with channels.
])
def test_vit_tiny_maps_sequences_and_images_to_logits(shape, tokens,
                                                      patch_values):
  model = models.get("vit_tiny", 10)
  x = jax.random.normal(jax.random.key(1), shape)
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  assert params["embed"]["patches"].shape == (patch_values, 32)
  assert params["embed"]["position"].shape == (tokens, 32)
  out = jax.jit(model.apply)({"params": params}, x)
  assert out.shape == (3, 10)
  assert np.isfinite(np.asarray(out)).all()


def test_patches_are_row_major_non_overlapping_blocks():
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  p = np.asarray(vit.patches_of(x, 4))
  assert p.shape == (2, 4, 48)
  # Patch 1 is rows 0-3, columns 4-7; its values (row, column, channel).
  np.testing.assert_array_equal(p[1, 1],
                                np.asarray(x[1, :4, 4:8]).reshape(-1))
  np.testing.assert_array_equal(
      np.asarray(vit.patches_of(jnp.arange(8.0)[None], 4)),
      [[[0, 1, 2, 3], [4, 5, 6, 7]]])


def test_parameter_paths_and_default_prunable_leaves():
  model = models.get("vit_tiny", 10)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.ones((1, 40)))["params"]
  names = masks.prunable_names(masks.make_mask(params))
  want = [f"block{i}/{m}/kernel" for i in (1, 2) for m in (
      "attn/key", "attn/out", "attn/query", "attn/value", "mlp/fc1",
      "mlp/fc2")] + ["out/kernel"]
  assert names == want  # No LayerNorm, no embedding.
  attn = params["block1"]["attn"]
  assert attn["query"]["kernel"].shape == (32, 32)
  assert attn["out"]["kernel"].shape == (32, 32)
  assert params["block2"]["mlp"]["fc1"]["kernel"].shape == (32, 64)
  assert set(params["block1"]) == {"ln1", "attn", "ln2", "mlp"}


def test_coupling_declares_heads_and_mlp_units():
  model = models.get("vit_tiny", 10, depth=3, heads=2)
  coupling = model.coupling()
  assert [u.kind for u in coupling] == ["head", "neuron"] * 3
  heads = coupling[2]
  assert heads.producers == ("block2/attn/query", "block2/attn/key",
                             "block2/attn/value")
  assert heads.consumers == ("block2/attn/out",)
  assert heads.block == 16
  assert coupling[3] == structure.Units(("block2/mlp/fc1",),
                                        ("block2/mlp/fc2",),
                                        activation="gelu")
  small = model.with_widths([1, 8, 2, 16, 1, 4])
  assert (small.heads, small.mlp_dims, small.head_dim) == ((1, 2, 1),
                                                          (8, 16, 4), 16)
  params = jax.eval_shape(small.init, jax.random.key(0),
                          jnp.ones((1, 40)))["params"]
  assert params["block1"]["attn"]["key"]["kernel"].shape == (32, 16)
  assert params["block3"]["attn"]["out"]["kernel"].shape == (16, 32)


@pytest.mark.parametrize("options, match", [
    ({"dim": 30, "heads": 4}, r"^model.heads: 4 heads must divide model.dim "
     r"30$"),
    ({"heads": 0}, r"^model.heads: must be an integer >= 1 \(got 0\)$"),
    ({"patch": 2.0}, r"^model.patch: must be an integer >= 1"),
    ({"width": 8}, r"^model.width: not an option of model 'vit_tiny'"),
])
def test_bad_options_are_refused_in_one_line(options, match):
  with pytest.raises(LotteryError, match=match):
    models.get("vit_tiny", 10, **options)


def test_a_patch_that_does_not_divide_the_input_is_refused():
  model = models.get("vit_tiny", 10, patch=3)
  with pytest.raises(LotteryError, match=r"^model.patch: 3 does not divide "
                     r"the input's spatial shape \(40,\)"):
    model.init(jax.random.key(0), jnp.ones((1, 40)))


@pytest.mark.slow
def test_imp_prunes_vit_heads_on_mnist1d(tmp_path):
  """mnist1d:quick with vit_tiny and structure 'head', two rounds: 4 heads
  per block, half of the survivors per round: 2, then 1 head; the MLPs
  keep every unit. (A third round would remove the last head of each block:
  IMP refuses it, tests/test_imp.py.)"""
  cfg = cli.load_config("mnist1d:quick")
  cfg.model.name = "vit_tiny"
  cfg.pruning.structure = "head"
  cfg.pruning.rounds = 2
  cfg.training.update(steps=20, eval_every=10, checkpoint_every=10)
  cfg.controls = ()
  summary = lottery.run(cfg, tmp_path, log=quiet)
  coupling = models.get("vit_tiny", 10).coupling()
  for r, heads in ((0, 4), (1, 2), (2, 1)):
    mask = lottery.load_ticket(tmp_path, r, "ticket").mask
    dead = structure.whole_units(mask, coupling)
    assert [int((~d).sum()) for d in dead.values()] == [heads, 64] * 2
    assert 0 < summary["rounds"][r]["test_accuracy"] <= 1


def test_config_options_reach_the_vit(npz_path):
  """model.dim, heads, mlp_dim and patch (0: the model's default) reach the
  factory; another model refuses them in one line before anything runs."""
  from conftest import tiny  # pylint: disable=g-import-not-at-top
  exp = lottery.build(tiny(npz_path, **{
      "model.name": "vit_tiny", "model.dim": 16, "model.heads": 2,
      "model.mlp_dim": 24, "model.patch": 2}))
  m = exp.model
  assert (m.dim, m.heads, m.mlp_dims, m.patch) == (16, (2, 2), (24, 24), 2)
  q = exp.init_params["block1"]["attn"]["query"]["kernel"]
  assert q.shape == (16, 16)
  with pytest.raises(LotteryError, match=r"^model.heads: not an option of "
                     r"model 'mlp_tiny'"):
    lottery.build(tiny(npz_path, **{"model.heads": 2}))
