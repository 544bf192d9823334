"""lottery.shrink on units that span several indices: a ViT's attention heads
(blocks of head_dim columns and rows) and the last conv's channels of
Conv-2/4/6 (read through a flatten: tiled rows). The MLP, VGG and ResNet
shrink tests are in test_structure.py."""

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import masks
from lottery import models
from lottery import pruning
from lottery import structure


def _init(model, shape):
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones(shape))["params"]
  # Nonzero biases: a silent unit's constant activation must be folded.
  return jax.tree.map(lambda x: x + 0.02, params)


def _assert_same_outputs(model, params, mask, small, small_params, x):
  want = model.apply({"params": lottery.apply_mask(mask, params)}, x)
  got = small.apply({"params": small_params}, x)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("shape", [(4, 40), (2, 16, 16, 3)])
def test_shrink_vit_removes_pruned_heads_and_mlp_units(shape):
  model = models.get("vit_tiny", 10)
  params = _init(model, shape)
  scores = jax.tree.map(jnp.abs, params)
  mask = pruning.prune(masks.make_mask(params), scores, 0.5, structure="head",
                       coupling=model)
  mask = pruning.prune(mask, scores, 0.25, structure="neuron", coupling=model)
  small, small_params, state = lottery.shrink(model, params, {}, mask)
  assert state == {}
  assert (small.heads, small.mlp_dims, small.head_dim) == ((2, 2), (48, 48),
                                                          8)
  dead = structure.whole_units(mask, model.coupling())
  kept = ~list(dead.values())[0]
  attn = small_params["block1"]["attn"]
  cols = np.repeat(kept, 8)
  for leaf in ("query", "key", "value"):
    np.testing.assert_array_equal(
        attn[leaf]["kernel"], np.asarray(params["block1"]["attn"][leaf]
                                         ["kernel"])[:, cols])
  np.testing.assert_array_equal(
      attn["out"]["kernel"],
      np.asarray(params["block1"]["attn"]["out"]["kernel"])[cols])
  x = jax.random.normal(jax.random.key(1), shape)
  _assert_same_outputs(model, params, mask, small, small_params, x)


def test_shrink_vit_folds_silent_gelu_units_and_keeps_silent_heads():
  """Unstructured pruning silences whole MLP columns whose GELU(bias) fc2
  still reads (folded into fc2's bias), and whole q/k/v columns of a head
  whose value bias still reaches attn/out (the head stays)."""
  model = models.get("vit_tiny", 10)
  params = _init(model, (4, 40))
  mask = jax.tree.map(np.array, masks.make_mask(params))
  mlp, attn = mask["block1"]["mlp"], mask["block1"]["attn"]
  mlp["fc1"]["kernel"][:, :5] = False
  for leaf in ("query", "key", "value"):
    attn[leaf]["kernel"][:, :8] = False  # head 0
  attn["out"]["kernel"][8:16] = False  # nothing reads head 1
  small, small_params, _ = lottery.shrink(model, params, {}, mask)
  assert (small.heads, small.mlp_dims) == ((3, 4), (59, 64))
  x = jax.random.normal(jax.random.key(1), (4, 40))
  _assert_same_outputs(model, params, mask, small, small_params, x)


@pytest.mark.parametrize("name, shape, positions", [
    ("conv2", (4, 40), 20),
    ("mnist1d_cnn", (4, 40), 5),
    ("conv4", (2, 8, 8, 3), 4),
    pytest.param("conv6", (2, 8, 8, 3), 1, marks=pytest.mark.slow),
])
def test_shrink_conv_nets_removes_channels_and_their_flatten_rows(
    name, shape, positions):
  model = models.get(name, 10)
  params = _init(model, shape)
  scores = jax.tree.map(jnp.abs, params)
  x = jax.random.normal(jax.random.key(1), shape)
  mask = pruning.prune(masks.make_mask(params), scores, 0.5,
                       structure="neuron", coupling=model)
  small, small_params, _ = lottery.shrink(model, params, {}, mask)
  kept = [int((~d).sum()) for d in
          structure.whole_units(mask, model.coupling()).values()]
  convs = [c for c in small.convs if c != "pool"]
  assert convs + list(small.dense) == kept
  after = ("fc1", kept[len(convs)]) if small.dense else ("out", 10)
  assert small_params[after[0]]["kernel"].shape == (
      positions * kept[len(convs) - 1], after[1])
  _assert_same_outputs(model, params, mask, small, small_params, x)
  unstructured = pruning.prune(masks.make_mask(params), scores, 0.95)
  small, small_params, _ = lottery.shrink(model, params, {}, unstructured)
  _assert_same_outputs(model, params, unstructured, small, small_params, x)


def test_shrunk_conv_nets_run_their_narrow_convolutions_as_taps():
  """`shrink` returns the smaller network `narrowed`: on the CPU its
  convolutions of at most `convolution.NARROW` channels run as sums of taps
  in inference (no convolution op in its program), computing what the
  masked network computes; the registry's networks keep the library
  kernel, and models without the field come back as they are."""
  from lottery.models import convolution
  from lottery.models.conv import ConvNet
  from lottery.shrink import narrowed
  model = ConvNet(convs=(16, 16, "pool"), dense=(8,), num_classes=4)
  shape = (2, 8, 8, 3)
  params = _init(model, shape)
  mask = pruning.prune(masks.make_mask(params), jax.tree.map(jnp.abs, params),
                       0.75, structure="neuron", coupling=model)
  small, small_params, _ = lottery.shrink(model, params, {}, mask)
  assert (small.narrow, model.narrow) == (convolution.NARROW, 0)
  assert small.convs == (4, 4, "pool")
  x = jax.random.normal(jax.random.key(1), shape)
  _assert_same_outputs(model, params, mask, small, small_params, x)
  conv_ops = lambda net, p: jax.jit(net.apply).lower(
      {"params": p}, x).compile().as_text().count(" convolution(")
  on_cpu = jax.default_backend() == "cpu"
  assert conv_ops(small, small_params) == (0 if on_cpu else 2)
  assert conv_ops(small.clone(narrow=0), small_params) == 2
  mlp = models.get("mlp_tiny", 10)
  assert narrowed(mlp) is mlp
  assert narrowed(small.clone(narrow=4)).narrow == 4  # A choice is kept.
  assert convolution.conv_module() is convolution.conv_module(0)
  assert convolution.conv_module(np.int64(8)) is convolution.conv_module(8)


def test_shrink_without_a_mask_is_refused():
  model = models.get("mnist1d_mlp", 10)
  params = _init(model, (1, 40))
  with pytest.raises(lottery.LotteryError, match=r"^mask: None; pass the "
                     r"ticket's mask \(lottery.make_mask\(params\) keeps "
                     r"every weight\)$"):
    lottery.shrink(model, params, {}, None)


class _NoBiasMLP(flax.linen.Module):
  """A user's MLP whose hidden or output layer has no bias."""
  width: int = 16
  fc1_bias: bool = True
  out_bias: bool = True

  @flax.linen.compact
  def __call__(self, x, train=False):
    del train
    h = flax.linen.Dense(self.width, use_bias=self.fc1_bias, name="fc1")(x)
    return flax.linen.Dense(3, use_bias=self.out_bias, name="out")(
        flax.linen.relu(h))

  def coupling(self):
    return (structure.Units(("fc1",), ("out",)),)

  def with_widths(self, widths):
    return self.clone(width=int(widths[0]))


@pytest.mark.parametrize("fc1_bias, out_bias", [(False, True), (True, False),
                                               (False, False)])
def test_shrink_takes_dense_layers_without_a_bias(fc1_bias, out_bias):
  model = _NoBiasMLP(fc1_bias=fc1_bias, out_bias=out_bias)
  params = _init(model, (1, 5))
  # Units 0-3 silent (no weight in), 4-7 unread (no weight out).
  mask = masks.make_mask(params)
  mask["fc1"]["kernel"] = np.array(mask["fc1"]["kernel"])
  mask["fc1"]["kernel"][:, :4] = False
  mask["out"]["kernel"] = np.array(mask["out"]["kernel"])
  mask["out"]["kernel"][4:8] = False
  small, small_params, _ = lottery.shrink(model, params, {}, mask)
  # Unread units go. A silent unit outputs relu(its bias), folded into the
  # consumer's bias; without a bias in fc1 that is 0 and goes anywhere,
  # and a nonzero one with no bias in `out` to go to stays.
  assert small.width == (12 if fc1_bias and not out_bias else 8)
  _assert_same_outputs(model, params, mask, small, small_params,
                       jax.random.normal(jax.random.key(1), (4, 5)))
