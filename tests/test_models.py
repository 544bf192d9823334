"""Models (registry, options, BatchNorm state) and on-device augmentation."""

import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import augment
from lottery import masks
from lottery import models
from lottery import rng


def _count(tree) -> int:
  return sum(int(np.prod(l.shape)) for l in jax.tree.leaves(tree))


def _shapes(name, num_classes=10, shape=(1, 32, 32, 3), **options):
  model = models.get(name, num_classes, **options)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))


# ------------------------------------------------------------------ registry


def test_names_include_every_family():
  assert models.names() == [
      "conv2", "conv4", "conv6", "lenet_300_100", "mlp_tiny", "mnist1d_cnn",
      "mnist1d_mlp", "resnet", "resnet20", "resnet32", "resnet50", "resnet56",
      "vgg", "vgg11", "vgg13", "vgg16", "vgg19", "vit", "vit_tiny"]


def test_resnet50_imagenet_layout():
  # torchvision's count: 25,557,032 parameters on 1000 classes.
  v = _shapes("resnet50", 1000, shape=(1, 224, 224, 3))
  assert _count(v["params"]) == 25_557_032
  p = v["params"]
  assert p["conv"]["kernel"].shape == (7, 7, 3, 64)
  assert p["stage4_block3"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
  assert "shortcut_conv" in p["stage1_block1"]  # 64 -> 256 channels
  assert "shortcut_conv" not in p["stage1_block2"]
  assert len([n for n in masks.named_leaves(masks.make_mask(p))]) == 161


def test_options_of():
  assert models.options_of("resnet") == ("depth", "width", "bn_init")
  assert models.options_of("resnet20") == ("width", "bn_init")
  assert models.options_of("vgg") == ("depth", "width", "bn_init")
  assert models.options_of("vgg16") == ("width", "bn_init")
  assert models.options_of("mlp_tiny") == ()
  with pytest.raises(lottery.LotteryError, match=r"^model.name: unknown"):
    models.options_of("resnet21")


def test_options_reach_the_factory():
  v = _shapes("resnet", depth=32, width=8)
  p = v["params"]
  assert p["conv"]["kernel"].shape == (3, 3, 3, 8)
  assert "stage3_block5" in p and "stage3_block6" not in p  # (32 - 2) / 6 = 5
  assert p["out"]["kernel"].shape == (32, 10)
  v = _shapes("resnet20", width=4)
  assert v["params"]["conv"]["kernel"].shape == (3, 3, 3, 4)
  assert v["params"]["out"]["kernel"].shape == (16, 10)
  v = _shapes("vgg", depth=11, width=16)
  assert v["params"]["conv1"]["kernel"].shape == (3, 3, 3, 16)
  assert v["params"]["conv8"]["kernel"].shape == (3, 3, 128, 128)
  assert "conv9" not in v["params"]


@pytest.mark.parametrize("name,options,message", [
    ("mlp_tiny", {"width": 4},
     r"^model.width: not an option of model 'mlp_tiny', which takes no "
     r"options \(got 4\)$"),
    ("resnet20", {"depth": 32},
     r"^model.depth: not an option of model 'resnet20', whose options are "
     r"\['width', 'bn_init'\] \(got 32\)$"),
    ("resnet20", {"bn_init": "zeros"}, r"^model.bn_init: must be one of "
     r"\['ones', 'uniform', 'zero_last'\] \(got 'zeros'\)$"),
    ("vgg16", {"bn_init": "zero_last"}, r"^model.bn_init: must be one of "
     r"\['ones', 'uniform'\] \(got 'zero_last'\)$"),
    ("resnet", {"depth": 21},
     r"^model.depth: must be 6n \+ 2, e.g. 20, 32, 56 or 110 \(got 21\)$"),
    ("resnet", {"depth": 2}, r"^model.depth: must be an integer >= 8 "),
    ("resnet", {"width": 0},
     r"^model.width: must be an integer >= 1 \(got 0\)$"),
    ("resnet", {"width": 4.0}, r"^model.width: .*\(got 4.0\)$"),
    ("vgg", {"depth": 15},
     r"^model.depth: VGG depth must be one of \[11, 13, 16, 19\] \(got 15\)$"),
    ("resnet18", {}, r"^model.name: unknown model, must be one of \[.*"
     r"'resnet20'.*\] \(got 'resnet18'\)$"),
])
def test_bad_options_are_refused(name, options, message):
  with pytest.raises(lottery.LotteryError, match=message):
    models.get(name, 10, **options)


# ------------------------------------------------------------- ResNet / VGG


@pytest.mark.parametrize("name,options,expected", [
    # OpenLTH's own test counts (models/test/test_cifar_{resnet,vgg}.py);
    # BatchNorm scale and bias included, running statistics not.
    ("resnet20", {}, 272_474),
    ("resnet", {"depth": 110}, 1_730_714),
    ("resnet", {"depth": 14, "width": 128}, 11_093_130),
    ("vgg11", {}, 9_231_114),
    ("vgg13", {}, 9_416_010),
    ("vgg16", {}, 14_728_266),
    ("vgg", {}, 14_728_266),
    ("vgg19", {}, 20_040_522),
])
def test_parameter_counts_match_openlth(name, options, expected):
  assert _count(_shapes(name, **options)["params"]) == expected


@pytest.mark.parametrize("name,options,last", [
    pytest.param("resnet20", {"width": 4}, "bn2", marks=pytest.mark.slow),
    pytest.param("resnet50", {"width": 2}, "bn3", marks=pytest.mark.slow),
    ("vgg11", {"width": 8}, None),
])
def test_bn_init_sets_the_batchnorm_scales(name, options, last):
  """'ones' (the default, the same weights as before the option), 'uniform'
  (OpenLTH: U[0, 1)), 'zero_last' (each residual block's last BatchNorm at
  0, torchvision's zero_init_residual; not for VGG); everything else is
  the same draw."""
  x = jnp.zeros((1, 32, 32, 3))

  def init(**more):
    model = models.get(name, 10, **options, **more)
    return masks.named_leaves(jax.jit(lambda k: model.init(rng.flat(k), x))(
        jax.random.key(0))["params"])
  default, ones, uniform = init(), init(bn_init="ones"), init(bn_init="uniform")
  scales = [k for k in default if k.endswith("/scale")]
  for k, v in default.items():
    np.testing.assert_array_equal(ones[k], v)
    if k not in scales:
      np.testing.assert_array_equal(uniform[k], v)
  assert all(np.all(default[k] == 1) for k in scales)
  u = np.concatenate([uniform[k] for k in scales])
  assert u.min() >= 0 and u.max() < 1 and len(np.unique(u)) == len(u)
  if last is None:
    return
  zero = init(bn_init="zero_last")
  zeroed = sorted(k for k in scales if np.all(zero[k] == 0))
  assert zeroed == sorted(k for k in scales if k.endswith(f"/{last}/scale"))
  assert all(np.all(zero[k] == 1) for k in scales if k not in zeroed)
  assert len(zeroed) == (9 if name == "resnet20" else 16)


@pytest.fixture(scope="module")
def resnet20_variables():
  model = models.get("resnet20", 10)
  # A flat key: the same weights, a fraction of the compile (tests/test_rng).
  return jax.jit(lambda k, x: model.init(rng.flat(k), x))(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_resnet20_prunes_exactly_its_22_kernels(resnet20_variables):
  v = resnet20_variables
  mask = masks.make_mask(v["params"])
  prunable = [n for n, m in masks.named_leaves(mask).items() if m is not None]
  assert len(prunable) == 22
  assert all(n.endswith("/kernel") and "bn" not in n for n in prunable)
  assert sum(n.endswith("shortcut_conv/kernel") for n in prunable) == 2
  assert "out/kernel" in prunable and "conv/kernel" in prunable
  # BatchNorm starts at scale 1, bias 0, running mean 0 and variance 1.
  for name, leaf in masks.named_leaves(v["params"]).items():
    if name.endswith("scale"):
      np.testing.assert_array_equal(leaf, 1.0)
    elif "bn" in name:
      np.testing.assert_array_equal(leaf, 0.0)
  stats = masks.named_leaves(v["batch_stats"])
  assert len(stats) == 2 * 21  # mean and var of 19 + 2 shortcut BatchNorms.
  for name, leaf in stats.items():
    np.testing.assert_array_equal(leaf, 1.0 if name.endswith("var") else 0.0)


def test_resnet_init_is_untruncated_he_normal(resnet20_variables):
  p = resnet20_variables["params"]
  k = np.asarray(p["stage3_block3"]["conv2"]["kernel"])  # fan_in 9 * 64.
  z = k / np.sqrt(2.0 / (9 * 64))
  assert abs(z.std() - 1.0) < 0.02 and abs(z.mean()) < 0.02
  # PyTorch's kaiming_normal_ is untruncated; Flax's he_normal would stop at 2.
  assert np.abs(z).max() > 3.0
  bound = 1 / np.sqrt(64)  # PyTorch's default bias of the 64 -> 10 layer.
  b = np.asarray(p["out"]["bias"])
  assert np.all(np.abs(b) <= bound) and np.any(b != 0)


@pytest.fixture(scope="module")
def small_resnet():
  model = models.get("resnet", 10, depth=8, width=2)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  return model, jax.jit(lambda k, x: model.init(rng.flat(k), x))(
      jax.random.key(0), x), x


def test_train_true_updates_batch_stats_with_batch_statistics(small_resnet):
  model, v, x = small_resnet
  train = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                           mutable=["batch_stats"]))
  logits, new = train(v, x)
  assert logits.shape == (4, 10)
  assert set(new) == {"batch_stats"}
  # Stem BatchNorm: running mean 0.9 * 0 + 0.1 * the batch mean of its input.
  h = jax.lax.conv_general_dilated(
      x, v["params"]["conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"],
                             0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(new["batch_stats"]["bn"]["var"],
                             0.9 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-5)
  # Training normalizes with the batch's statistics, not the running ones.
  other = {"params": v["params"], "batch_stats": new["batch_stats"]}
  np.testing.assert_array_equal(train(other, x)[0], logits)


def test_train_false_uses_the_running_averages(small_resnet):
  model, v, x = small_resnet
  evaluate = jax.jit(lambda v, x: model.apply(v, x))
  _, new = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"]))(v, x)
  updated = {"params": v["params"], "batch_stats": new["batch_stats"]}
  before, after = evaluate(v, x), evaluate(updated, x)
  assert not np.allclose(before, after)
  # Each example on its own: evaluation does not mix examples in a batch.
  np.testing.assert_allclose(evaluate(updated, x[:1]), after[:1], rtol=1e-6,
                             atol=1e-6)
  evaluate_explicit = jax.jit(lambda v, x: model.apply(v, x, train=False))
  np.testing.assert_array_equal(evaluate_explicit(updated, x), after)


@pytest.mark.parametrize("name, shape, why", [
    ("conv6", (4, 4, 3), "inputs of 4x4 are too small for 'ConvNet', which "
     "halves them 3 times (each side needs at least 8)"),
    ("conv6", (6, 3), "inputs of 6 are too small for 'ConvNet', which halves "
     "them 3 times (each side needs at least 8)"),
    ("vgg11", (8, 8, 3), "inputs of 8x8 are too small for 'vgg', which "
     "halves them 4 times (each side needs at least 16)")])
def test_inputs_too_small_for_the_pooling_are_refused(name, shape, why):
  model = models.get(name, 10)
  with pytest.raises(lottery.LotteryError, match=f"^data: {re.escape(why)}"):
    model.init(jax.random.key(0), jnp.ones((1, *shape)))
  big = (8, 8, 3) if name == "conv6" else (16, 16, 3)
  model.init(jax.random.key(0), jnp.ones((1, *big)))  # Just enough.


def test_vgg_runs_with_state():
  model = models.get("vgg11", 10, width=4)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  v = jax.jit(lambda k, x: model.init(rng.flat(k), x))(jax.random.key(0), x)
  logits, new = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"]))(v, x)
  assert logits.shape == (2, 10) and set(new) == {"batch_stats"}
  assert not np.allclose(new["batch_stats"]["bn1"]["mean"], 0.0)
  mask = masks.make_mask(v["params"])
  assert len(jax.tree.leaves(mask)) == 9  # 8 convs + out.
  assert v["params"]["conv8"]["kernel"].shape == (3, 3, 32, 32)


def test_image_models_refuse_other_inputs():
  for name in ("resnet20", "vgg16"):
    with pytest.raises(lottery.LotteryError) as e:
      models.get(name, 10).init(jax.random.key(0), jnp.zeros((1, 40)))
    # str(e), as the entry points print it (JAX adds a note beside it).
    assert str(e.value) == (f"model.name: '{name[:-2]}' needs image batches "
                            "(N, H, W, C) (got shape (1, 40))")


# ------------------------------------------------------- the MNIST-1D CNN


def _conv1d_by_hand(x, w, b, stride=2, pad=1):
  """PyTorch's Conv1d (cross-correlation) on (N, L, C) inputs, in numpy."""
  x = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
  k = w.shape[0]
  steps = (x.shape[1] - k) // stride + 1
  return np.stack([np.einsum("nkc,kco->no", x[:, t * stride:t * stride + k],
                             w) for t in range(steps)], axis=1) + b


def test_mnist1d_cnn_is_the_papers_cnn():
  """Greydanus & Kobak's ConvBase: convs of 25 channels with kernels 5, 3, 3,
  stride 2, padding 1 (length 40 -> 19 -> 10 -> 5), ReLU, a linear layer on
  the 5 x 25 map; PyTorch's default init, U(+-1/sqrt(fan_in)) for kernels and
  biases alike."""
  model = models.get("mnist1d_cnn", 10)
  x = np.asarray(jax.random.normal(jax.random.key(1), (3, 40)))
  p = model.init(jax.random.key(0), x)["params"]
  assert _count(p) == 5_210
  assert {k: v["kernel"].shape for k, v in p.items()} == {
      "conv1": (5, 1, 25), "conv2": (3, 25, 25), "conv3": (3, 25, 25),
      "out": (125, 10)}
  for name, fan_in in [("conv1", 5), ("conv2", 75), ("conv3", 75),
                       ("out", 125)]:
    for leaf in ("kernel", "bias"):
      v = np.abs(np.asarray(p[name][leaf]))
      bound = 1 / np.sqrt(fan_in)
      assert v.max() <= bound and v.max() > 0.8 * bound, (name, leaf)
  h = x[..., None]
  for name in ("conv1", "conv2", "conv3"):
    h = np.maximum(_conv1d_by_hand(h, np.asarray(p[name]["kernel"]),
                                   np.asarray(p[name]["bias"])), 0)
  assert h.shape == (3, 5, 25)
  want = h.reshape(3, -1) @ np.asarray(p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(jax.jit(model.apply)({"params": p}, x), want,
                             rtol=1e-5, atol=1e-6)
  wide = _shapes("mnist1d_cnn", shape=(1, 40), width=64)["params"]
  assert wide["conv2"]["kernel"].shape == (3, 64, 64)
  assert wide["out"]["kernel"].shape == (5 * 64, 10)
  with pytest.raises(lottery.LotteryError, match=r"^model.width: must be"):
    models.get("mnist1d_cnn", 10, width=0)


# ------------------------------------------- the stateless models unchanged


def _digest(tree) -> str:
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.asarray(leaf).tobytes())
  return h.hexdigest()[:16]


# Recorded before the `train` argument was added (init key 0, input key 1).
_BEFORE = {
    "lenet_300_100": ((2, 28, 28, 1), "e77afcaa642b0d01",
                      (0.38788700103759766, -2.2621898651123047)),
    "mnist1d_mlp": ((2, 40), "776e3e3201120e7f",
                    (0.3741401135921478, -0.5279551148414612)),
    "conv2": ((2, 8, 8, 3), "bb61e87172d7dca0",
              (-0.1648787260055542, -0.11357015371322632)),
    "conv4": ((2, 8, 8, 3), "5d5b0fda6537c008", None),
    "conv6": ((2, 8, 8, 3), "9e555d759044b842", None),
    "mlp_tiny": ((2, 5), "99c932cd4d8f9808",
                 (-0.04026668518781662, -0.05907796323299408)),
}


@pytest.mark.parametrize("name", sorted(_BEFORE))
def test_stateless_models_are_unchanged(name):
  shape, digest, logits = _BEFORE[name]
  model = models.get(name, 10)
  x = jax.random.normal(jax.random.key(1), shape)
  v = model.init(jax.random.key(0), x)
  assert set(v) == {"params"}
  assert _digest(v) == digest  # Bit-identical parameters.
  out = jax.jit(lambda v, x: model.apply(v, x))(v, x)
  out_train = jax.jit(lambda v, x: model.apply(v, x, train=True))(v, x)
  np.testing.assert_array_equal(out, out_train)
  if logits is not None:
    np.testing.assert_allclose(out[0, :2], logits, rtol=1e-6)


# -------------------------------------------------------------- augmentation


def test_augment_registry():
  assert augment.names() == ["crop_flip", "none"]
  with pytest.raises(
      lottery.LotteryError,
      match=r"^data.augment: unknown augmentation, must be one of "
            r"\['crop_flip', 'none'\] \(got 'flip'\)$"):
    augment.get("flip")
  x = jnp.ones((2, 4, 4, 3))
  assert augment.get("none")(jax.random.key(0), x) is x


def _images(n, h=8, w=8, c=2):
  """Distinct non-zero pixel values, so every shift is recognisable."""
  return (np.arange(n * h * w * c, dtype=np.float32).reshape(n, h, w, c) + 1)


def _shifted(image, dy, dx):
  """`image` moved down by dy and right by dx, zeros where it moved from."""
  h, w = image.shape[:2]
  out = np.zeros_like(image)
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
  return out


def _transform_of(out, image):
  """The (dy, dx, flipped) that maps `image` to `out`; exactly one must."""
  found = [(dy, dx, f) for dy in range(-4, 5) for dx in range(-4, 5)
           for f in (False, True)
           if np.array_equal(out, _shifted(image[:, ::-1] if f else image,
                                           dy, dx))]
  assert len(found) == 1, found
  return found[0]


def test_shifted_helper_by_hand():
  image = np.arange(1, 10, dtype=np.float32).reshape(3, 3, 1)
  np.testing.assert_array_equal(
      _shifted(image, 1, -1)[..., 0], [[0, 0, 0], [2, 3, 0], [5, 6, 0]])


def test_random_crop_is_a_zero_padded_shift():
  x = _images(64)
  out = np.asarray(jax.jit(augment.random_crop, static_argnums=2)(
      jax.random.key(3), jnp.asarray(x), 4))
  assert out.shape == x.shape and out.dtype == np.float32
  shifts = [_transform_of(o, i) for o, i in zip(out, x)]
  assert not any(f for _, _, f in shifts)
  assert len({s[:2] for s in shifts}) > 20  # Offsets per example.


def test_random_flip_mirrors_about_half():
  x = _images(200, 2, 4, 1)
  out = np.asarray(jax.jit(augment.random_flip)(jax.random.key(0), x))
  flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)])
  kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
  assert np.all(flipped ^ kept)
  assert 70 < flipped.sum() < 130


def test_crop_flip_is_deterministic_per_key():
  fn = jax.jit(augment.get("crop_flip"))
  x = jnp.asarray(_images(64))
  a = np.asarray(fn(jax.random.key(0), x))
  np.testing.assert_array_equal(a, fn(jax.random.key(0), x))
  np.testing.assert_array_equal(a, augment.crop_flip(jax.random.key(0), x))
  assert not np.array_equal(a, fn(jax.random.key(1), x))
  moves = [_transform_of(o, i) for o, i in zip(a, np.asarray(x))]
  assert {f for _, _, f in moves} == {False, True}


def test_crop_flip_vmaps_over_replicates():
  fn = augment.get("crop_flip")
  keys = jax.random.split(jax.random.key(0), 3)
  x = jnp.asarray(_images(3 * 4)).reshape(3, 4, 8, 8, 2)
  out = jax.jit(jax.vmap(fn))(keys, x)
  assert out.shape == x.shape
  for r in range(3):
    np.testing.assert_array_equal(out[r], fn(keys[r], x[r]))


def test_crop_flip_needs_images():
  with pytest.raises(lottery.LotteryError,
                     match=r"^data.augment: 'crop_flip' needs image batches "
                           r"\(N, H, W, C\) \(got shape \(2, 40\)\)$"):
    augment.crop_flip(jax.random.key(0), jnp.zeros((2, 40)))


@pytest.mark.parametrize("size,kernel,stride,padding", [
    (8, 3, 1, ((1, 1), (1, 1))), (8, 3, 2, ((1, 1), (1, 1))),
    (8, 1, 2, "VALID"), (9, 3, 2, "SAME"), (7, 7, 2, ((3, 3), (3, 3))),
    (10, 2, 3, ((0, 1), (2, 0)))])
def test_convolution_matches_lax_bit_for_bit(size, kernel, stride, padding):
  from jax import lax
  from lottery.models import convolution
  rng = np.random.default_rng(0)
  # 3 -> 12 channels: wider than convolution.NARROW (the library).
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 12)), jnp.float32)
  ours, ref = _conv_and_grads(x, w, stride, padding)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kernel,stride,padding", [
    (5, 2, ((1, 1),)), (3, 1, "SAME"), (3, 2, "VALID"), (4, 3, ((2, 1),))])
def test_1d_convolution_matches_lax_bit_for_bit(kernel, stride, padding):
  """A 1-D convolution in Flax's layout runs as the 2-D one of a single row:
  its value and gradients are lax's 1-D convolution's, bit for bit."""
  from jax import lax
  from lottery.models import convolution
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 40, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, 3, 12)), jnp.float32)

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(
        x, w, (stride,), padding, dimension_numbers=("NWC", "WIO", "NWC"))))
  ours, ref = (jax.jit(jax.value_and_grad(loss(conv), (0, 1)))(x, w)
               for conv in (convolution.conv_general_dilated,
                            lax.conv_general_dilated))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("x_shape, w_shape, dn, options", [
    ((4, 40, 3), (3, 3, 12), ("NWC", "WIO", "NWC"), {"rhs_dilation": (2,)}),
    ((4, 40, 3), (3, 3, 12), ("NWC", "WIO", "NWC"),
     {"lhs_dilation": (2,), "padding": ((1, 1),)}),
    ((4, 40, 3), (3, 1, 12), ("NWC", "WIO", "NWC"),
     {"feature_group_count": 3}),
    ((4, 40, 3), (3, 3, 12), ("NWC", "WIO", "NWC"),
     {"preferred_element_type": jnp.float32}),
    ((4, 3, 40), (12, 3, 3), None, {}),  # lax's default (N, C, W) layout.
    ((2, 3, 8, 8), (12, 3, 3, 3), None, {}),  # (N, C, H, W).
])
def test_other_convolutions_are_lax_s(x_shape, w_shape, dn, options):
  """Dilated, grouped or typed convolutions and lax's own default layout
  are `lax.conv_general_dilated` itself: the same values and gradients."""
  from jax import lax
  from lottery.models import convolution
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
  spatial = len(x_shape) - 2

  options = {"padding": "SAME", **options}

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(
        x, w, (1,) * spatial, dimension_numbers=dn, **options)))
  ours, ref = (jax.jit(jax.value_and_grad(loss(conv), (0, 1)))(x, w)
               for conv in (convolution.conv_general_dilated,
                            lax.conv_general_dilated))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def _conv_and_grads(x, w, stride, padding):
  """(value, (dx, dw)) of a loss of the framework's convolution and of
  lax's."""
  from jax import lax
  from lottery.models import convolution

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(
        x, w, (stride, stride), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))))
  ours = jax.jit(jax.value_and_grad(loss(convolution.conv_general_dilated),
                                    (0, 1)))(x, w)
  ref = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated),
                                   (0, 1)))(x, w)
  return ours, ref


@pytest.mark.parametrize("size,kernel,stride,padding,channels", [
    (8, 3, 1, ((1, 1), (1, 1)), (2, 3)), (8, 3, 2, "SAME", (8, 8)),
    (9, 1, 2, "VALID", (4, 1)), (10, 2, 3, ((0, 1), (2, 0)), (1, 6)),
    (7, 5, 1, ((-1, 2), (2, 2)), (2, 2))])
def test_narrow_convolution_runs_as_taps_and_matches_lax(size, kernel, stride,
                                                         padding, channels):
  """With `narrow` 8, a convolution of at most 8 channels runs on the CPU as
  a sum of shifted slices when not differentiated (no convolution op in its
  program), with lax's values to float rounding; its gradients are lax's.
  The default (0) keeps the library kernel."""
  from jax import lax
  from lottery.models import convolution
  ci, co = channels
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, size, size, ci)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, ci, co)), jnp.float32)
  forward = lambda narrow: lambda x, w: convolution.conv_general_dilated(
      x, w, (stride, stride), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), narrow=narrow)
  conv_op = lambda w, narrow: " convolution(" in jax.jit(
      forward(narrow)).lower(x, w).compile().as_text()
  assert conv_op(w, 0)
  ref = lax.conv_general_dilated(x, w, (stride, stride), padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(jax.jit(forward(8))(x, w), ref, rtol=1e-5,
                             atol=1e-5)
  assert conv_op(w, 8) == (jax.default_backend() != "cpu")
  assert conv_op(jnp.concatenate([w] * (8 // co + 1), axis=-1), 8)  # Wider.
  ours, ref = _conv_and_grads(x, w, stride, padding)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def test_convolution_second_order_and_vmap_match_lax():
  """GraSP differentiates the backward pass, and replicates vmap it: both
  go through the CPU's unfused kernel-gradient input like plain lax."""
  from jax import lax
  from lottery.models import convolution
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 2, 6, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 3, 4)), jnp.float32)

  def hvp(conv):
    def loss(w, x):
      return jnp.sum(jnp.sin(conv(x, w, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))))
    # GraSP's Hessian-gradient product: d/dw <grad, stop_gradient(grad)>.
    return lambda w, x: jax.grad(lambda w: jnp.vdot(
        jax.grad(loss)(w, x), jax.lax.stop_gradient(jax.grad(loss)(w, x))))(w)
  ours = jax.jit(jax.vmap(hvp(convolution.conv_general_dilated)))(w, x)
  ref = jax.jit(jax.vmap(hvp(lax.conv_general_dilated)))(w, x)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
  one = jax.jit(hvp(convolution.conv_general_dilated))(w[1], x[1])
  np.testing.assert_allclose(ours[1], one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape,w_shape", [
    ((0, 5, 5, 2), (3, 3, 2, 4)), ((2, 5, 5, 0), (3, 3, 0, 4)),
    ((2, 5, 5, 2), (3, 3, 2, 0))])
def test_convolution_of_an_empty_batch_or_no_channels_is_lax(x_shape,
                                                             w_shape):
  import functools
  from jax import lax
  from lottery.models import convolution
  x, w = jnp.ones(x_shape), jnp.ones(w_shape)

  def value_and_grads(conv):
    return jax.value_and_grad(lambda x, w: jnp.sum(conv(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))),
                              (0, 1))(x, w)
  for a, b in zip(jax.tree.leaves(value_and_grads(functools.partial(
      convolution.conv_general_dilated, narrow=8))), jax.tree.leaves(
          value_and_grads(lax.conv_general_dilated))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("replicates", [
    pytest.param(0, marks=pytest.mark.slow), 2])
def test_kernel_gradient_inputs_are_not_recomputed_in_transposes(replicates):
  """On the CPU each computed convolution input reaches its kernel
  gradient's transpose through a conditional, so XLA does not fuse the
  BatchNorm/residual/ReLU chain into the transpose (which recomputed it with
  the batch's stride: half of ResNet-20's step). Vmapped replicates too."""
  # Wider than convolution.NARROW: library kernels (narrow is 0 anyway).
  model = models.get("resnet20", 10, width=10)
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)

  def grad(params):
    return jax.grad(lambda p: jnp.sum(model.apply(
        {**variables, "params": p}, x, train=True,
        mutable=["batch_stats"])[0]))(params)
  params = variables["params"]
  if replicates:
    grad = jax.vmap(grad)
    params = jax.tree.map(lambda p: jnp.stack([p] * replicates), params)
  text = jax.jit(grad).lower(params).compile().as_text()
  # 19 kernel gradients; the stem's input is the (constant) data.
  assert text.count(" conditional(") == 18, text.count(" conditional(")
  operands = [line.split(" fusion(")[1].split("), kind=")[0].count("%")
              for line in text.splitlines()
              if "transpose" in line.split("=")[0] and " fusion(" in line]
  assert operands and sum(n > 2 for n in operands) <= 1, operands


@pytest.mark.parametrize("name, shape, convs", [
    # Wider than convolution.NARROW: library kernels (narrow is 0 anyway).
    # CIFAR's 32x32: at 2x2 feature maps XLA swaps a convolution's operands
    # (a rewrite of its own, whatever the input's form).
    ("resnet20", (2, 32, 32, 3), 21),
    # 1-D convolutions, run as 2-D ones of a single row.
    ("mnist1d_cnn", (2, 40), 3),
])
def test_convolution_gradients_in_a_loop_are_canonical(name, shape, convs):
  """Every convolution of a ResNet-20 or MNIST-1D CNN train step inside a
  fori_loop has the form XLA:CPU runs through a library kernel (dim_labels
  b01f_01io->b01f), not the loop nest of a non-canonical one."""
  model = models.get(name, 10, **({"width": 10} if name == "resnet20" else {}))
  x = jnp.zeros(shape)
  variables = model.init(jax.random.key(0), x)

  def step(i, params):
    del i
    grads = jax.grad(lambda p: jnp.sum(model.apply(
        {**variables, "params": p}, x, train=True,
        mutable=["batch_stats"])[0]))(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

  text = jax.jit(lambda p: jax.lax.fori_loop(0, 2, step, p)).lower(
      variables["params"]).compile().as_text()
  labels = re.findall(r"dim_labels=([^,\s]+)", text)
  # Each convolution: forward, kernel gradient, input gradient (not the
  # first's).
  assert len(labels) >= 3 * convs - 1, len(labels)
  assert set(labels) == {"b01f_01io->b01f"}, set(labels)
