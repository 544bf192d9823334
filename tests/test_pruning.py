"""Device pruning: identical to the host reference, eagerly, jitted, vmapped."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery import masks
from lottery import models
from lottery import pruning
from lottery import scores
from lottery import select
from lottery import structure
from lottery.errors import LotteryError
from lottery.models import mlp

from conftest import mlp_tiny_params
from conftest import with_leaf


# The host implementation this module replaced (float64, stable numpy sort),
# kept verbatim as the reference.
def _remove_lowest(alive, score_list, n):
  if n <= 0:
    return
  idx = [np.flatnonzero(a) for a in alive]
  cand = np.concatenate([s[i] for s, i in zip(score_list, idx)])
  if not np.all(np.isfinite(cand)):
    raise LotteryError("pruning.score: scores of surviving weights are not "
                       "all finite")
  drop = np.argsort(cand, kind="stable")[:n]
  offsets = np.cumsum([0] + [len(i) for i in idx])
  for j, (a, i) in enumerate(zip(alive, idx)):
    sel = drop[(drop >= offsets[j]) & (drop < offsets[j + 1])] - offsets[j]
    a[i[sel]] = False


def _flatten(mask, score_tree):
  mleaves, treedef = jax.tree.flatten(mask, is_leaf=lambda x: x is None)
  names = masks.named_leaves(mask)
  return treedef, list(zip(names, mleaves, treedef.flatten_up_to(score_tree)))


def _reference_prune(mask, score_tree, fraction, *, scope="layerwise",
                     layer_fractions=None):
  overrides = pruning.parse_layer_fractions(layer_fractions)
  compiled = [(masks.compile_patterns([p], "pruning.layer_fractions")[0], r)
              for p, r in overrides.items()]
  treedef, leaves = _flatten(mask, score_tree)
  alive, score_list, rates = [], [], []
  for name, m, s in leaves:
    if m is None:
      continue
    alive.append(np.array(m, dtype=bool).reshape(-1))
    score_list.append(np.asarray(s, dtype=np.float64).reshape(-1))
    rates.append(next((r for rx, r in compiled if rx.fullmatch(name)), None))
  pooled = [j for j, r in enumerate(rates) if r is None]
  live_names = [name for name, m, _ in leaves if m is not None]
  groups = {}  # 'global': one group; 'module': one per parent path.
  if scope in ("global", "module"):
    for j in pooled:
      key = live_names[j].rpartition("/")[0] if scope == "module" else ""
      groups.setdefault(key, []).append(j)
  for group in groups.values():
    n = pruning.num_to_remove(fraction,
                              sum(int(alive[j].sum()) for j in group))
    _remove_lowest([alive[j] for j in group],
                   [score_list[j] for j in group], n)
  for j, r in enumerate(rates):
    if r is None and scope != "layerwise":
      continue
    rate = fraction if r is None else r
    _remove_lowest([alive[j]], [score_list[j]],
                   pruning.num_to_remove(rate, int(alive[j].sum())))
  it = iter(alive)
  new = [None if m is None else next(it).reshape(np.shape(m))
         for _, m, _ in leaves]
  return jax.tree.unflatten(treedef, new)


def _reference_keep_top(mask, score_tree, keep):
  treedef, leaves = _flatten(mask, score_tree)
  new = []
  for name, m, s in leaves:
    if m is None:
      new.append(None)
      continue
    a = np.array(m, dtype=bool).reshape(-1)
    _remove_lowest([a], [np.asarray(s, np.float64).reshape(-1)],
                   int(a.sum()) - keep[name])
    new.append(a.reshape(np.shape(m)))
  return jax.tree.unflatten(treedef, new)


SHAPES = {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
          "fc": {"kernel": (24, 10)},
          "head": {"kernel": (10, 5), "bias": (5,)},
          "out": {"kernel": (5, 3)}}


def tree_params():
  return jax.tree.map(lambda s: jnp.zeros(s), SHAPES,
                      is_leaf=lambda x: isinstance(x, tuple))


def tie_scores(seed, high=4):
  """Integer-valued float32 scores in [0, high): many ties."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.integers(0, high, p.shape), jnp.float32),
      tree_params())


def random_mask(seed, density=0.7):
  rng = np.random.default_rng(seed)
  m = masks.make_mask(tree_params())
  return jax.tree.map(
      lambda x: None if x is None else jnp.asarray(rng.random(x.shape)
                                                   < density),
      m, is_leaf=lambda x: x is None)


def assert_same(a, b):
  na, nb = masks.named_leaves(a), masks.named_leaves(b)
  assert list(na) == list(nb)
  for k in na:
    if na[k] is None:
      assert nb[k] is None, k
    else:
      assert np.asarray(nb[k]).dtype == np.bool_, k
      np.testing.assert_array_equal(np.asarray(na[k]), np.asarray(nb[k]),
                                    err_msg=k)


@pytest.mark.parametrize("fraction,n", [
    (0.2, 235200), (0.5, 1), (0.5, 3), (0.5, 2**31 - 1), (0.3, 5),
    (0.123456789, 2**31 - 1), (0.123456789, 2**31 - 2), (0.2, 2**31 - 1)])
def test_device_count_pinned_values(fraction, n):
  want = pruning.num_to_remove(fraction, n)
  assert int(select.device_num_to_remove(fraction, n)) == want
  got = jax.jit(lambda x: select.device_num_to_remove(fraction, x))(
      jnp.int32(n))
  assert int(got) == want


def test_device_count_matches_exact_rule_on_adversarial_pairs():
  rng = np.random.default_rng(0)
  fractions = [0.5, 0.2, 0.1, 0.3, 0.123456789, 0.987654321, 0.999999999,
               0.000000001, 1e-20, 0.30000000000000004, 0.9999999999999999,
               0.7, 1 / 3, 2 / 3, 0.0, *rng.random(6).tolist()]
  base = [0, 1, 2, 3, 5, 7, 235200, 2**24 + 1, 2**30, 2**31 - 1, 2**31 - 2,
          2**31 - 3, 999999999, 1000000001, *rng.integers(0, 2**31 - 1, 40)]
  # Rates enter the compiled function as arrays of constants: one compile.
  jitted = jax.jit(select.counts_on_device)
  halves_seen = 0
  for f in fractions:
    p = Fraction(repr(f))
    n = list(base)
    if p and p.denominator % 2 == 0:
      # n with p * n exactly on a half (the round-up case), and neighbours.
      h = (p.denominator // 2 * pow(p.numerator, -1, p.denominator)
           ) % p.denominator
      for x in (h, h + p.denominator, h + 2 * p.denominator):
        if x + 1 < 2**31:
          assert p * x % 1 == Fraction(1, 2)
          n += [x - 1, x, x + 1]
          halves_seen += 1
    want = [pruning.num_to_remove(f, int(x)) for x in n]
    got = jitted(select.rate_constants([f] * len(n)),
                 jnp.asarray(n, jnp.int32))
    assert np.asarray(got).tolist() == want
  assert halves_seen >= 10
  # Eagerly too.
  n = jnp.asarray([2**31 - 1, 235200, 7], jnp.int32)
  assert np.asarray(select.device_num_to_remove(0.123456789, n)).tolist() \
      == [pruning.num_to_remove(0.123456789, int(x)) for x in n]


LAYER_FRACTIONS = (None, "out/kernel=0.1",
                   {"head/kernel": 0.5, "conv/.*": 0.25})


def check_rounds(prune_fn, fraction, kw, seeds=range(3), rounds=4):
  """prune_fn over repeated rounds equals the reference, mask for mask."""
  for seed in seeds:
    ref = got = (random_mask(seed) if seed
                 else masks.make_mask(tree_params()))
    for r in range(rounds):  # each round prunes the previous output
      s = tie_scores(10 * seed + r, high=3 if r % 2 else 50)
      ref = _reference_prune(ref, s, fraction, **kw)
      got = prune_fn(got, s)
      assert_same(ref, got)


@pytest.mark.parametrize("scope", pruning.SCOPES)
@pytest.mark.parametrize("layer_fractions", LAYER_FRACTIONS)
def test_prune_matches_reference_eagerly(scope, layer_fractions):
  kw = dict(scope=scope, layer_fractions=layer_fractions)
  for fraction in (0.2, 0.5, 0.35, 0.0, 0.9):
    check_rounds(lambda m, s: pruning.prune(m, s, fraction, **kw), fraction,
                 kw)


@pytest.mark.parametrize("scope,layer_fractions,fraction", [
    ("layerwise", None, 0.2), ("global", None, 0.35),
    ("layerwise", LAYER_FRACTIONS[1], 0.5), ("global", LAYER_FRACTIONS[1], 0.2),
    ("layerwise", LAYER_FRACTIONS[2], 0.35), ("global", LAYER_FRACTIONS[2], 0.5)])
def test_prune_matches_reference_under_jit(scope, layer_fractions, fraction):
  kw = dict(scope=scope, layer_fractions=layer_fractions)
  check_rounds(jax.jit(lambda m, s: pruning.prune(m, s, fraction, **kw)),
               fraction, kw)


def test_module_scope_ranks_a_layers_kernel_and_bias_together():
  mask = {"a": {"bias": jnp.ones(2, bool), "kernel": jnp.ones((2, 2), bool)},
          "b": {"kernel": jnp.ones(4, bool)}, "c": None}
  s = {"a": {"bias": jnp.array([9., .5]),
             "kernel": jnp.array([[1., 5.], [2., 6.]])},
       "b": {"kernel": jnp.array([4., 3., 2., 1.])}, "c": jnp.zeros(3)}
  # Module a: 3 of its 6 (0.5, 1, 2), its bias among them; b: 2 of 4.
  got = pruning.prune(mask, s, 0.5, scope="module")
  assert_same(got, {"a": {"bias": np.array([True, False]),
                          "kernel": np.array([[False, True], [False, True]])},
                    "b": {"kernel": np.array([True, True, False, False])},
                    "c": None})
  # Layerwise, the same scores take one of the two biases and 2 of 4 kernels.
  lw = masks.named_leaves(pruning.prune(mask, s, 0.5))
  assert np.asarray(lw["a/kernel"]).sum() == 2
  assert np.asarray(lw["a/bias"]).tolist() == [True, False]


def test_prune_traces_once_for_new_masks():
  traces = []

  def f(m, s):
    traces.append(1)
    return pruning.prune(m, s, 0.2, scope="global",
                         layer_fractions="out/kernel=0.1")

  jitted = jax.jit(f)
  for seed in range(4):
    m, s = random_mask(seed, density=0.3 + 0.15 * seed), tie_scores(seed)
    assert_same(jitted(m, s), _reference_prune(
        m, s, 0.2, scope="global", layer_fractions="out/kernel=0.1"))
  assert len(traces) == 1


@pytest.mark.parametrize("scope", pruning.SCOPES)
def test_vmap_over_replicates_matches_separate_calls(scope):
  reps = 3
  ms = [random_mask(s) for s in range(reps)]
  ss = [tie_scores(s) for s in range(reps)]
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  stacked_m = jax.tree.map(
      lambda *x: None if x[0] is None else jnp.stack(x), *ms,
      is_leaf=lambda x: x is None)
  out = jax.vmap(lambda m, s: pruning.prune(m, s, 0.2, scope=scope))(
      stacked_m, stack(ss))
  for i in range(reps):
    one = jax.tree.map(lambda x: None if x is None else x[i], out,
                       is_leaf=lambda x: x is None)
    assert_same(one, _reference_prune(ms[i], ss[i], 0.2, scope=scope))
    assert_same(one, pruning.prune(ms[i], ss[i], 0.2, scope=scope))


def test_nonfinite_scores_raise_eagerly_and_rank_as_minus_inf_under_jit():
  m = {"w": jnp.array([True, True, False, True, True, True])}
  s = {"w": jnp.array([5.0, jnp.nan, -jnp.inf, 1.0, jnp.inf, 2.0])}
  with pytest.raises(LotteryError, match="^scores: .*not all finite"):
    pruning.prune(m, s, 0.5)
  with pytest.raises(LotteryError, match="^scores: .*not all finite"):
    pruning.keep_top(m, s, {"w": 2})
  # 5 survivors, round(2.5) = 3 go: NaN (as -inf), then 1.0, then 2.0; the
  # already pruned -inf weight is not counted and +inf stays.
  got = jax.jit(lambda m, s: pruning.prune(m, s, 0.5))(m, s)
  assert np.asarray(got["w"]).tolist() == [True, False, False, False, True,
                                           False]
  got = jax.jit(lambda m, s: pruning.keep_top(m, s, {"w": 1}))(m, s)
  assert np.asarray(got["w"]).tolist() == [False] * 4 + [True, False]
  # Pruned weights may have any score.
  s_dead = {"w": jnp.array([5.0, 3.0, jnp.nan, 1.0, 4.0, 2.0])}
  assert np.asarray(pruning.prune(m, s_dead, 0.5)["w"]).tolist() == [
      True, False, False, False, True, False]


def test_negative_zero_ties_with_zero_by_position():
  m = {"w": jnp.ones((4,), bool)}
  s = {"w": jnp.array([0.0, -0.0, 0.0, -0.0])}
  got = pruning.prune(m, s, 0.5)
  assert np.asarray(got["w"]).tolist() == [False, False, True, True]


def test_keep_top_matches_reference_and_checks_counts():
  for seed in range(3):
    m, s = random_mask(seed), tie_scores(seed, high=3)
    avail = masks.counts(m)
    keep = {k: kept * (seed + 1) // 4 for k, (kept, _) in avail.items()}
    ref = _reference_keep_top(m, s, keep)
    assert_same(ref, pruning.keep_top(m, s, keep))
    assert_same(ref, jax.jit(lambda m, s: pruning.keep_top(m, s, keep))(m, s))
    assert {k: c for k, (c, _) in masks.counts(ref).items()} == keep
  assert pruning.prune_to_counts is pruning.keep_top
  m, s = random_mask(0), tie_scores(0)
  kept = masks.counts(m)
  keep = {k: c for k, (c, _) in kept.items()}
  too_many = {**keep, "fc/kernel": keep["fc/kernel"] + 1}
  with pytest.raises(LotteryError, match=(
      rf"^counts: cannot keep {keep['fc/kernel'] + 1} weights of fc/kernel, "
      rf"only {keep['fc/kernel']} survive")):
    pruning.keep_top(m, s, too_many)
  with pytest.raises(LotteryError, match=r"^counts: cannot keep 241 weights "
                     r"of fc/kernel, which has 240"):
    pruning.keep_top(m, s, {**keep, "fc/kernel": 241})
  with pytest.raises(LotteryError,
                     match="^counts: no keep count for out/kernel"):
    pruning.keep_top(m, s, {k: v for k, v in keep.items() if k != "out/kernel"})
  # Under jit the survivor count is unknown: a leaf asked for too many keeps
  # all its survivors.
  got = jax.jit(lambda m, s: pruning.keep_top(m, s, too_many))(m, s)
  assert_same(got, m)
  # Counts computed in the compiled step (a schedule's): the same masks.
  half = {k: c // 2 for k, c in keep.items()}
  traced = jax.jit(lambda m, s, t: pruning.keep_top(
      m, s, {k: c // t for k, c in keep.items()}))(m, s, jnp.int32(2))
  assert_same(traced, pruning.keep_top(m, s, half))
  # A concrete JAX count is checked as an int is.
  with pytest.raises(LotteryError, match=r"^counts: cannot keep 241 weights "
                     r"of fc/kernel, which has 240"):
    pruning.keep_top(m, s, {**keep, "fc/kernel": jnp.int32(241)})
  with pytest.raises(LotteryError, match=r"^counts: the count of fc/kernel "
                     r"must be a whole number \(got an array of float32\[\]\)"):
    pruning.keep_top(m, s, {**keep, "fc/kernel": jnp.float32(3)})


@pytest.mark.slow
def test_random_like_same_eager_jit_and_reference():
  # Two prunable leaves and a None leaf: each leaf compiles its own draws.
  params = {"a": {"kernel": jnp.zeros((6, 5)), "bias": jnp.zeros((5,))},
            "b": {"kernel": jnp.zeros((7,))}}
  full = masks.make_mask(params)
  s1 = jax.tree.map(lambda p: jnp.asarray(np.arange(p.size).reshape(p.shape)
                                          % 3, jnp.float32), params)
  m = pruning.prune(full, s1, 0.6, scope="global")
  key = jax.random.key(7)
  eager = pruning.random_like(m, key)
  assert_same(eager, jax.jit(pruning.random_like)(m, key))
  # The host version: keep_top of scores.random over the all-kept mask.
  ref = _reference_keep_top(full, scores.random(full, key),
                            {k: c for k, (c, _) in masks.counts(m).items()})
  assert_same(eager, ref)
  # 0.6 * 37 -> 22 go: all 13 zeros, then the first 9 ones (all in a).
  assert masks.counts(eager) == masks.counts(m) == {"a/kernel": (11, 30),
                                                    "b/kernel": (4, 7)}
  # vmap over replicates (keys and masks) = one call per replicate.
  m2 = pruning.prune(m, s1, 0.5)
  stacked = jax.tree.map(lambda *x: None if x[0] is None else jnp.stack(x),
                         m, m2, is_leaf=lambda x: x is None)
  keys = jax.random.split(key)
  out = jax.vmap(pruning.random_like)(stacked, keys)
  for i, mi in enumerate((m, m2)):
    one = jax.tree.map(lambda x: None if x is None else x[i], out,
                       is_leaf=lambda x: x is None)
    assert_same(one, pruning.random_like(mi, keys[i]))
    assert masks.counts(one) == masks.counts(mi)


def test_prune_rejects_bad_arguments():
  m, s = masks.make_mask(tree_params()), tie_scores(0)
  with pytest.raises(LotteryError, match=r"^fraction: must be in "
                     r"\[0, 1\) \(got 1.0\)"):
    pruning.prune(m, s, 1.0)
  with pytest.raises(LotteryError, match="^scope: unknown scope"):
    pruning.prune(m, s, 0.2, scope="everywhere")
  bad = {**s, "fc": {"kernel": jnp.zeros((10, 24))}}
  with pytest.raises(LotteryError, match=r"^scores: leaf 'fc/kernel' has "
                     r"shape \(10, 24\), the mask has \(24, 10\)$"):
    pruning.prune(m, bad, 0.2)
  # fraction 0 removes nothing.
  assert_same(pruning.prune(m, s, 0.0, scope="global"), m)


@pytest.mark.parametrize("call,message", [
    (lambda m, s: pruning.prune(m, None, 0.2),
     "scores: must have the mask's pytree structure (a score array per "
     "prunable leaf: ['fc1/kernel', 'out/kernel']), got NoneType None"),
    (lambda m, s: pruning.prune(m, [1, 2], 0.2),
     "scores: must have the mask's pytree structure (a score array per "
     "prunable leaf: ['fc1/kernel', 'out/kernel']), got list [1, 2]"),
    (lambda m, s: pruning.prune(m, {**s, "out": {**s["out"], "kernel": 3.0}},
                                0.2),
     "scores: leaf 'out/kernel' must be an array of shape (32, 3), got float "
     "3.0"),
    (lambda m, s: pruning.prune(m, s, None),
     "fraction: must be a number in [0, 1) (got NoneType None)"),
    (lambda m, s: pruning.prune(m, s, "0.2"),
     "fraction: must be a number in [0, 1) (got str '0.2')"),
    (lambda m, s: pruning.prune(m, s, True),
     "fraction: must be a number in [0, 1) (got bool True)"),
    (lambda m, s: pruning.prune(m, s, -0.1),
     "fraction: must be in [0, 1) (got -0.1)"),
    (lambda m, s: pruning.prune(None, s, 0.2),
     "mask: must be a mask pytree (bool arrays, None where not prunable; "
     "from lottery.make_mask), got None"),
    (lambda m, s: pruning.prune(
        with_leaf(m, "fc1/kernel", np.ones((6, 32), np.float32)), s, 0.2),
     "mask: leaf 'fc1/kernel' has dtype float32, must be bool"),
    (lambda m, s: pruning.prune(m, s, 0.2, scope=None),
     "scope: unknown scope None (known: ['global', 'layerwise', 'module'])"),
    (lambda m, s: pruning.prune(m, s, 0.2, layer_fractions="nomatch=0.5"),
     "layer_fractions: 'nomatch' matches no prunable parameter (prunable: "
     "['fc1/kernel', 'out/kernel'])"),
    (lambda m, s: pruning.prune(m, s, 0.2,
                                layer_fractions={"fc1/bias": 0.5}),
     "layer_fractions: 'fc1/bias' matches no prunable parameter (prunable: "
     "['fc1/kernel', 'out/kernel'])"),
    (lambda m, s: pruning.prune(m, s, 0.2, layer_fractions=5),
     "layer_fractions: expected 'regex=rate,...' or a {regex: rate} "
     "mapping, got 5"),
    (lambda m, s: pruning.prune(m, s, 0.2, layer_fractions="out/kernel"),
     "layer_fractions: expected 'regex=rate,...', got 'out/kernel'"),
    (lambda m, s: pruning.prune(m, s, 0.2,
                                layer_fractions={"out/kernel": "half"}),
     "layer_fractions: rate for 'out/kernel' must be a number in [0, 1), "
     "got 'half'"),
    (lambda m, s: pruning.prune(m, s, 0.2, layer_fractions={3: 0.5}),
     "layer_fractions: patterns must be regex strings (got 3)"),
    (lambda m, s: pruning.keep_top(m, s, 5),
     "counts: must be a {path: count} mapping for the prunable leaves "
     "['fc1/kernel', 'out/kernel'], got int 5"),
    (lambda m, s: pruning.keep_top(m, s, {"fc1/kernel": 3,
                                          "out/kernel": 2.5}),
     "counts: the count of out/kernel must be a whole number (got 2.5)"),
    (lambda m, s: pruning.random_like(
        with_leaf(m, "out/kernel", np.ones((32, 3), np.int32)),
        jax.random.key(0)),
     "mask: leaf 'out/kernel' has dtype int32, must be bool"),
])
def test_prune_names_the_bad_argument(call, message):
  p = mlp_tiny_params()
  with pytest.raises(LotteryError) as e:
    call(masks.make_mask(p), scores.magnitude(p))
  assert str(e.value) == message


def test_prune_refuses_a_traced_fraction():
  p = mlp_tiny_params()
  m, s = masks.make_mask(p), scores.magnitude(p)
  with pytest.raises(LotteryError, match=r"^fraction: must be a static "
                     r"Python number in \[0, 1\), not a traced value"):
    jax.jit(lambda f: pruning.prune(m, s, f))(0.2)


def test_layer_fractions_that_match_prune_as_before():
  p = mlp_tiny_params()
  m, s = masks.make_mask(p), scores.magnitude(p)
  got = pruning.prune(m, s, 0.2, layer_fractions="out/kernel=0.5")
  assert masks.counts(got) == {"fc1/kernel": (192 - 38, 192),
                               "out/kernel": (48, 96)}


# -- per-layer fractions ----------------------------------------------------

def test_layer_fractions_keep_exact_per_layer_counts_over_rounds_under_jit():
  # fc at 0.5, out exempt (0), conv and head at the fraction 0.2; each round
  # removes round(rate * survivors) of each leaf.
  prune_fn = jax.jit(lambda m, s: pruning.prune(
      m, s, 0.2, layer_fractions="fc/kernel=0.5,out/kernel=0"))
  mask, kept = masks.make_mask(tree_params()), []
  for r in range(2):
    mask = prune_fn(mask, tie_scores(r))
    kept.append({k: int(np.asarray(v).sum())
                 for k, v in masks.named_leaves(mask).items()
                 if v is not None})
  assert kept == [
      {"conv/kernel": 72 - 14, "fc/kernel": 120, "head/kernel": 40,
       "out/kernel": 15},
      {"conv/kernel": 58 - 12, "fc/kernel": 60, "head/kernel": 32,
       "out/kernel": 15}]


def _mlp():
  """An MLP 6 -> 10 -> 8 -> 3: unit sets fc1 (10 units) and fc2 (8)."""
  model = mlp.MLP(features=(10, 8), num_classes=3)
  params = model.init(jax.random.key(0), jnp.ones((1, 6)))["params"]
  return model, masks.make_mask(params), jax.tree.map(jnp.abs, params)


def _units_kept(mask, model):
  return {k: int((~v).sum())
          for k, v in structure.whole_units(mask, model.coupling()).items()}


@pytest.mark.parametrize("scope", pruning.SCOPES)
def test_neuron_unit_sets_take_their_producers_fraction(scope):
  model, mask, s = _mlp()
  prune_fn = jax.jit(lambda m, s: pruning.prune(
      m, s, 0.2, scope=scope, layer_fractions="fc2/kernel=0.5",
      structure="neuron", coupling=model))
  first = prune_fn(mask, s)
  second = prune_fn(first, s)
  # fc1 at 0.2 (ranked alone: the only set left at the fraction), fc2 at 0.5.
  assert _units_kept(first, model) == {"fc1": 8, "fc2": 4}
  assert _units_kept(second, model) == {"fc1": 6, "fc2": 2}  # 1.6 -> 2
  # The same units as each set pruned on its own at its rate.
  alone = lambda f: structure.whole_units(pruning.prune(
      mask, s, f, structure="neuron", coupling=model), model.coupling())
  dead = structure.whole_units(first, model.coupling())
  np.testing.assert_array_equal(dead["fc1"], alone(0.2)["fc1"])
  np.testing.assert_array_equal(dead["fc2"], alone(0.5)["fc2"])


def test_neuron_layer_fraction_zero_exempts_a_unit_set():
  model, mask, s = _mlp()
  new = pruning.prune(mask, s, 0.5, scope="global",
                      layer_fractions="fc1/kernel=0", structure="neuron",
                      coupling=model)
  assert _units_kept(new, model) == {"fc1": 10, "fc2": 4}


def test_head_sets_take_their_projections_fraction():
  model = models.get("vit_tiny", 10, heads=8)
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 40)))["params"]
  new = jax.jit(lambda m, s: pruning.prune(
      m, s, 0.5, layer_fractions="block1/attn/.*=0", structure="head",
      coupling=model))(masks.make_mask(params), jax.tree.map(jnp.abs, params))
  heads = {k: v for k, v in _units_kept(new, model).items() if "query" in k}
  # Block 1's heads exempt, 4 of block 2's 8 gone.
  assert heads == {"block1/attn/query+block1/attn/key+block1/attn/value": 8,
                   "block2/attn/query+block2/attn/key+block2/attn/value": 4}


@pytest.mark.parametrize("residual, kw, message", [
    (False, dict(structure="neuron", layer_fractions="out/kernel=0.5"),
     "layer_fractions: 'out/kernel' matches the kernel of no unit set's "
     "producer under structure 'neuron' (a set takes its producer's rate; "
     "producers: ['fc1/kernel', 'fc2/kernel'])"),
    (True, dict(structure="neuron", layer_fractions="fc1/kernel=0.5"),
     "layer_fractions: the units of fc1+fc2 take one rate, but its "
     "producers' kernels get {'fc1/kernel': 0.5, 'fc2/kernel': None} (None: "
     "the fraction); give them one rate"),
    (False, dict(structure="2:4", layer_fractions="fc1/kernel=0.5"),
     "layer_fractions: not used with structure '2:4', which keeps N of every "
     "M in every layer (got 'fc1/kernel=0.5')"),
    (False, dict(structure="neuron", layer_fractions="fc(1/kernel=0.5"),
     "layer_fractions: invalid regex 'fc(1/kernel' (missing ), unterminated "
     "subpattern at position 2)"),
    (False, dict(structure="neuron", layer_fractions="fc1/kernel=1.0"),
     "layer_fractions: rate for 'fc1/kernel' must be in [0, 1), got 1.0"),
])
def test_layer_fractions_refusals_name_the_argument(residual, kw, message):
  model = (mlp.ResidualMLP(hidden=8, num_classes=3) if residual
           else _mlp()[0])
  params = model.init(jax.random.key(0), jnp.ones((1, 6)))["params"]
  with pytest.raises(LotteryError) as e:
    pruning.prune(masks.make_mask(params), params, 0.2, coupling=model, **kw)
  assert str(e.value) == message


def test_layer_fractions_on_streams_kept_whole_name_residual_streams():
  model = models.get("resnet20", 10, width=1)
  params = jax.jit(model.init)(jax.random.key(0),
                               jnp.ones((1, 8, 8, 3)))["params"]
  mask = masks.make_mask(params)
  with pytest.raises(LotteryError) as e:
    pruning.prune(mask, params, 0.2, coupling=model, structure="neuron",
                  residual_streams=False,
                  layer_fractions="stage1_block1/conv2/kernel=0.5")
  assert str(e.value) == (
      "layer_fractions: 'stage1_block1/conv2/kernel' matches only "
      "residual-stream producers (['stage1_block1/conv2/kernel']), which "
      "residual_streams=False keeps whole; set it to True or leave them out "
      "of layer_fractions")
  # With the streams prunable, the stage's stream takes the rate of all its
  # producers.
  new = pruning.prune(mask, params, 0.2, coupling=model, structure="neuron",
                      layer_fractions="(conv|stage1_block./conv2)/kernel=0.5")
  assert masks.density(new) < 1
