"""Bad arguments give one-line LotteryErrors naming the argument: masks where
they enter (keep_pruned, init_state, apply_mask, prune), prune's other
arguments, damaged workdirs, repeated and block overrides on the command
line, sparse.end_step; and batch indices computed per call of a long chunk
give the same batches and the same training."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lottery
from experiments import cli
from lottery import config as config_lib
from lottery import loop
from lottery import masks
from lottery import models
from lottery import optim
from lottery import pruning
from lottery import scores
from lottery import step
from lottery import workdir as workdir_lib
from lottery.errors import LotteryError

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _params(dim=6):
  """mlp_tiny: fc1 (dim, 32), out (32, 3), with biases."""
  x = np.zeros((1, dim), np.float32)
  return models.get("mlp_tiny", 3).init(jax.random.key(0), x)["params"]


def _with(mask, name, leaf):
  """`mask` with leaf 'module/name' replaced (a copy)."""
  mod, _, key = name.partition("/")
  return {**mask, mod: {**mask[mod], key: leaf}}


def _bad_masks():
  p = _params()
  m = masks.make_mask(p)
  kernel = np.ones((6, 32), bool)
  return {
      "other_model": (
          masks.make_mask(_params(dim=40)),
          "mask: leaf 'fc1/kernel' has shape (40, 32), params have (6, 32)"),
      "missing": (
          {"out": m["out"]},
          "mask: leaves differ from those of params (missing ['fc1/bias', "
          "'fc1/kernel'], unexpected [])"),
      "extra": (
          {**m, "head": {"kernel": kernel}},
          "mask: leaves differ from those of params (missing [], unexpected "
          "['head/kernel'])"),
      "transposed": (
          _with(m, "fc1/kernel", kernel.T),
          "mask: leaf 'fc1/kernel' has shape (32, 6), params have (6, 32)"),
      "broadcastable": (
          _with(m, "fc1/kernel", np.ones((1, 32), bool)),
          "mask: leaf 'fc1/kernel' has shape (1, 32), params have (6, 32)"),
      "float": (
          _with(m, "fc1/kernel", np.ones((6, 32), np.float32)),
          "mask: leaf 'fc1/kernel' has dtype float32, must be bool"),
      "int": (
          _with(m, "out/kernel", jnp.ones((32, 3), jnp.int32)),
          "mask: leaf 'out/kernel' has dtype int32, must be bool"),
      "list": (
          [kernel, kernel],
          "mask: must have the pytree structure of params (a bool array or "
          "None per leaf, e.g. from lottery.make_mask), got a list of 2 "
          "where params are a dict with keys ['fc1', 'out']"),
      "scalar": (
          True,
          "mask: must have the pytree structure of params (a bool array or "
          "None per leaf, e.g. from lottery.make_mask), got bool True where "
          "params are a dict with keys ['fc1', 'out']"),
  }


BAD_MASKS = list(_bad_masks())


@pytest.mark.parametrize("case", BAD_MASKS)
def test_keep_pruned_update_refuses_bad_masks(case):
  mask, message = _bad_masks()[case]
  p = _params()
  tx = lottery.keep_pruned(optax.adam(1e-2))
  state = tx.init(p)
  with pytest.raises(LotteryError) as e:
    tx.update(p, state, p, mask=mask)
  assert str(e.value) == message
  # Under jit too, where it is found when traced (shapes and dtypes); a
  # scalar is then a traced array.
  with pytest.raises(LotteryError) as e:
    jax.jit(lambda m: tx.update(p, state, p, mask=m))(mask)
  if case == "scalar":
    message = message.replace("bool True", "an array of shape ()")
  assert str(e.value) == message


@pytest.mark.parametrize("case", BAD_MASKS)
def test_init_state_and_apply_mask_refuse_bad_masks(case):
  mask, message = _bad_masks()[case]
  p = _params()
  with pytest.raises(LotteryError) as e:
    step.init_state(p, optax.adam(1e-2), mask=mask)
  assert str(e.value) == message
  with pytest.raises(LotteryError) as e:
    masks.apply_mask(mask, p)
  # apply_mask's second argument is `tree`.
  assert str(e.value) == message.replace("params have", "the tree has") \
      .replace("params are", "the tree is").replace("params", "the tree")


def test_keep_pruned_refuses_a_non_optimizer_and_a_mask_without_params():
  with pytest.raises(LotteryError) as e:
    lottery.keep_pruned(5)
  assert str(e.value) == ("tx: must be an optax GradientTransformation, e.g. "
                          "optax.adam(1e-3) (got int 5)")
  p = _params()
  tx = lottery.keep_pruned(optax.sgd(0.1))
  with pytest.raises(LotteryError, match=r"^params: keep_pruned's update"):
    tx.update(p, tx.init(p), mask=masks.make_mask(p))


def test_masks_with_none_leaves_and_subtrees_stay_allowed():
  p = _params()
  m = masks.make_mask(p)  # None for the biases
  tx = lottery.keep_pruned(optax.sgd(0.1))
  tx.update(p, tx.init(p), p, mask=m)
  # None standing for a whole subtree: not prunable.
  sub = {"fc1": None, "out": m["out"]}
  tx.update(p, tx.init(p), p, mask=sub)
  q = masks.apply_mask(sub, p)
  assert np.array_equal(q["fc1"]["kernel"], p["fc1"]["kernel"])
  step.init_state(p, tx, mask=sub)
  masks.check_mask(None, p)  # no mask: dense


def test_mask_check_runs_when_traced_not_at_every_step(monkeypatch):
  """The check reads shapes and dtypes when the step is traced: a compiled
  step runs it once, however many steps it takes."""
  calls = []
  real = masks.check_mask
  monkeypatch.setattr(masks, "check_mask",
                      lambda *a, **k: (calls.append(1), real(*a, **k))[1])
  p = _params()
  m = masks.make_mask(p)
  tx = lottery.keep_pruned(optax.sgd(0.1))

  @jax.jit
  def one(params, opt_state, mask):
    updates, opt_state = tx.update(params, opt_state, params, mask=mask)
    return optax.apply_updates(params, updates), opt_state

  s = tx.init(p)
  one(p, s, m)
  traced = len(calls)
  assert traced >= 1
  for _ in range(5):
    p, s = one(p, s, m)
  assert len(calls) == traced


# --- prune's other arguments -------------------------------------------------


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
        _with(m, "fc1/kernel", np.ones((6, 32), np.float32)), s, 0.2),
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
        _with(m, "out/kernel", np.ones((32, 3), np.int32)),
        jax.random.key(0)),
     "mask: leaf 'out/kernel' has dtype int32, must be bool"),
])
def test_prune_names_the_bad_argument(call, message):
  p = _params()
  with pytest.raises(LotteryError) as e:
    call(masks.make_mask(p), scores.magnitude(p))
  assert str(e.value) == message


def test_prune_refuses_a_traced_fraction():
  p = _params()
  m, s = masks.make_mask(p), scores.magnitude(p)
  with pytest.raises(LotteryError, match=r"^fraction: must be a static "
                     r"Python number in \[0, 1\), not a traced value"):
    jax.jit(lambda f: pruning.prune(m, s, f))(0.2)


def test_layer_fractions_that_match_prune_as_before():
  p = _params()
  m, s = masks.make_mask(p), scores.magnitude(p)
  got = pruning.prune(m, s, 0.2, layer_fractions="out/kernel=0.5")
  assert masks.counts(got) == {"fc1/kernel": (192 - 38, 192),
                               "out/kernel": (48, 96)}


# --- workdirs ---------------------------------------------------------------


@pytest.mark.parametrize("content", ["[]", "null", "3"])
def test_config_json_that_is_not_an_object(tmp_path, content):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "config.json").write_text(content)
  message = (f"config: '{wd}/config.json' holds {content}, not a JSON "
             f"object; it is not a lottery run's file: restore it, or use a "
             f"new --workdir")
  for fn in (workdir_lib.check, workdir_lib.claim):
    with pytest.raises(LotteryError) as e:
      fn(wd, lottery.base_config())
    assert str(e.value) == message


def test_facts_json_that_is_not_an_object(tmp_path):
  wd = tmp_path / "wd"
  workdir_lib.claim(wd, lottery.base_config(), extra={"a": 1}).release()
  (wd / "facts.json").write_text("[]")
  for fn in (workdir_lib.check, workdir_lib.claim):
    with pytest.raises(LotteryError, match=r"^config: '.*facts.json' holds "
                       r"\[\], not a JSON object"):
      fn(wd, lottery.base_config(), extra={"a": 1})


def test_lock_that_is_a_directory_or_a_dangling_symlink(tmp_path):
  c = lottery.base_config()
  wd = tmp_path / "dir"
  (wd / "lock").mkdir(parents=True)
  for fn in (workdir_lib.check, workdir_lib.claim):
    with pytest.raises(LotteryError) as e:
      fn(wd, c)
    assert str(e.value) == (f"workdir: the lock file '{wd}/lock' is a "
                            f"directory; remove it and rerun")
  wd = tmp_path / "link"
  wd.mkdir()
  os.symlink(tmp_path / "nowhere" / "lock", wd / "lock")
  for fn in (workdir_lib.check, workdir_lib.claim):
    with pytest.raises(LotteryError) as e:
      fn(wd, c)
    assert str(e.value) == (
        f"workdir: the lock file '{wd}/lock' is a dangling symlink (to "
        f"'{tmp_path}/nowhere/lock'); remove it and rerun")


def test_lock_that_cannot_be_opened(tmp_path, monkeypatch):
  c = lottery.base_config()
  wd = tmp_path / "wd"
  workdir_lib.claim(wd, c).release()
  lock = wd / "lock"
  if os.geteuid() != 0:  # root reads and writes anything
    lock.chmod(0)
    with pytest.raises(LotteryError) as e:
      workdir_lib.check(wd, c)
    assert str(e.value) == (
        f"workdir: the lock file '{lock}' is not readable and writable; fix "
        f"its permissions (or remove it) and rerun")
    lock.chmod(0o644)
  real = os.open

  def deny(path, *a, **k):
    if os.fspath(path) == os.fspath(lock):
      raise PermissionError(13, "Permission denied", os.fspath(path))
    return real(path, *a, **k)

  monkeypatch.setattr(os, "open", deny)
  with pytest.raises(LotteryError) as e:
    workdir_lib.claim(wd, c)
  assert str(e.value) == (
      f"workdir: cannot open the lock file '{lock}' (Permission denied); "
      f"remove it or fix its permissions, and rerun")


def test_workdir_that_cannot_be_created(monkeypatch, tmp_path):
  c = lottery.base_config()
  wd = "/proc/lottery_run"
  if os.path.isdir("/proc") and not os.access("/proc", os.W_OK | os.X_OK):
    # Not root: refused before anything is tried.
    with pytest.raises(LotteryError) as e:
      workdir_lib.claim(wd, c)
    assert str(e.value) == ("workdir: '/proc/lottery_run' cannot be created: "
                            "'/proc' is not writable")
    return
  if not os.path.isdir("/proc") or os.path.exists(wd):
    # Elsewhere: a directory whose mkdir fails as /proc's does.
    wd = tmp_path / "ro" / "run"
    real = pathlib.Path.mkdir

    def refuse(self, *a, **k):
      if self == wd:
        raise FileNotFoundError(2, "No such file or directory", str(self))
      return real(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
  with pytest.raises(LotteryError) as e:
    workdir_lib.claim(wd, c)
  assert str(e.value) == (
      f"workdir: '{wd}' cannot be created (No such file or directory); use a "
      f"--workdir in a writable directory")


def test_cli_workdir_that_cannot_be_created(npz_path):
  if not os.path.isdir("/proc") or os.path.exists("/proc/lottery_run"):
    pytest.skip("needs /proc")
  res = subprocess.run(
      [sys.executable, "-m", "experiments.imp", "--config=mnist1d:quick",
       "--config.data.name=npz", f"--config.data.path={npz_path}",
       "--config.model.name=mlp_tiny", "--workdir=/proc/lottery_run"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
  assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
  # After the lines that describe the data and model: one error line.
  errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert errors == [res.stderr.strip().splitlines()[-1]], res.stderr
  assert errors[0].startswith("error: workdir: '/proc/lottery_run' cannot be "
                              "created"), res.stderr


# --- batch indices per call --------------------------------------------------


def _reference_batch_indices(n, batch_size, seed, start, stop):
  """loop.batch_indices before it worked an epoch slice at a time."""
  per_epoch = n // batch_size
  out = np.empty((stop - start, batch_size), np.int32)
  perms = {}
  for i, s in enumerate(range(start, stop)):
    epoch, pos = divmod(s, per_epoch)
    if epoch not in perms:
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    out[i] = perms[epoch][pos * batch_size:(pos + 1) * batch_size]
  return out


def test_batch_indices_of_a_chunk_are_the_slice_of_the_full_array():
  full = loop.batch_indices(50, 8, 3, 0, 40)  # 6 batches per epoch
  assert np.array_equal(full, _reference_batch_indices(50, 8, 3, 0, 40))
  for a, b in [(0, 1), (5, 6), (5, 7), (6, 12), (11, 40), (17, 29)]:
    assert np.array_equal(loop.batch_indices(50, 8, 3, a, b), full[a:b])
  assert loop.batch_indices(50, 8, 3, 4, 4).shape == (0, 8)
  with pytest.raises(LotteryError) as e:
    loop.batch_indices(50, 64, 3, 0, 4)
  assert str(e.value) == ("batch_size: must be at most the 50 training "
                          "examples (got 64)")


def _reference_chunk_bounds(start, stop, every, extra=()):
  """loop.chunk_bounds before `iter_bounds` (a set of every boundary)."""
  b = {start, stop}
  for e in every:
    if e:
      b.update(range((start // e + 1) * e, stop, e))
  b.update(s for s in extra if start < s < stop)
  return sorted(b)


def test_iter_bounds_is_chunk_bounds():
  for args in [(0, 20, [10, 5], ()), (3, 47, [10, 0, 7], (4, 9, 50, 3, 20)),
               (0, 5, [], ()), (7, 8, [100], (7,)), (5, 5, [2], ()),
               (0, 30, [10, 10], (10, 10, 15))]:
    want = _reference_chunk_bounds(*args)
    assert loop.chunk_bounds(*args) == want
    assert list(loop.iter_bounds(*args)) == want
  # Lazily: a billion steps of one-step chunks are never all stored.
  bounds = loop.iter_bounds(0, 10**9, [1])
  assert [next(bounds) for _ in range(3)] == [0, 1, 2]


def _train_setup(form):
  t = config_lib.base_config().training
  t.update(optimizer="adam", learning_rate=0.05)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 6)).astype(np.float32)
  y = rng.integers(0, 3, 64).astype(np.int32)
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  mask = pruning.prune(masks.make_mask(params),
                       scores.random(params, jax.random.key(1)), 0.5)
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn), form=form)
  data = loop.put_data(x, y, x[:10], y[:10])
  return lp, lambda: step.init_state(params, tx, mask=mask), data


@pytest.mark.parametrize("form", ["scan", "python"])
def test_chunks_split_into_calls_train_bit_identically(form, monkeypatch):
  """A chunk run as calls of at most MAX_CALL_INDICES indices (here 6 steps
  of 16: 6, 6, 6, 1) trains exactly as one call, and reports the same."""
  lr_fn = lambda a, b: np.linspace(0.05, 0.01, 19)[a:b].astype(np.float32)
  kw = dict(stop=19, lr_fn=lr_fn, batch_size=16, data_seed=3, eval_every=19)
  lp, state, data = _train_setup(form)
  s1, h1, _ = loop.train(lp, state(), data, **kw)
  monkeypatch.setattr(loop, "MAX_CALL_INDICES", 6 * 16)
  reached = []
  s2, h2, _ = loop.train(lp, state(), data, on_chunk=reached.append, **kw)
  assert reached == [6, 12, 18, 19]
  assert h1 == h2
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    assert np.array_equal(a, b)


# --- the command line ----------------------------------------------------------


def _cli(module, *args):
  res = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                       env=ENV, capture_output=True, text=True, timeout=120)
  assert res.returncode == 1, res.stderr
  assert "Traceback" not in res.stderr
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1, res.stderr
  return lines[0]


def test_cli_refuses_a_repeated_override(tmp_path):
  assert _cli("experiments.pai", "--config=pai_mnist1d:quick",
              f"--workdir={tmp_path / 'wd'}", "--dry_run",
              "--config.pai.methods=('snip',)",
              "--config.pai.methods=('random',)") == (
                  "error: --config.pai.methods: given twice")
  assert _cli("experiments.imp", "--config=mnist1d:quick",
              "--config.seeds.num=2", f"--workdir={tmp_path / 'wd'}",
              "--config.seeds.num", "3") == (
                  "error: --config.seeds.num: given twice")
  assert not (tmp_path / "wd").exists()


def test_cli_names_the_fields_of_a_block(tmp_path):
  assert _cli("experiments.imp", "--config=mnist1d:quick",
              f"--workdir={tmp_path / 'wd'}", "--dry_run",
              "--config.seeds=3") == (
                  "error: seeds: is a block of fields (init, data, control, "
                  "num); set one, e.g. --config.seeds.num=3")
  c = lottery.base_config()
  assert cli.flag_error_message(
      ValueError("flag --config.training=5: Could not override"), c) == (
          "training: is a block of fields (steps, batch_size, optimizer, "
          "learning_rate, momentum, nesterov, weight_decay, schedule, "
          "lr_boundaries, lr_decay, warmup_steps, label_smoothing, "
          "eval_every, checkpoint_every, loop); set one, e.g. --config.training.steps=5")
  # A leaf field keeps its message.
  assert cli.flag_error_message(
      ValueError("flag --config.training.steps=abc: bad"), c) == (
          "training.steps: must be an integer (got 'abc')")


# --- sparse.end_step ----------------------------------------------------------


def test_sparse_end_step_must_be_a_multiple_of_update_every():
  c = lottery.base_config()
  c.sparse.update(update_every=25, end_step=130)
  with pytest.raises(LotteryError) as e:
    config_lib.validate(c)
  assert str(e.value) == (
      "sparse.end_step: must be a multiple of sparse.update_every=25, where "
      "GMP's mask updates happen (e.g. 125 or 150) (got 130)")
  c.sparse.update(end_step=10)
  with pytest.raises(LotteryError, match=r"\(e\.g\. 25\) \(got 10\)$"):
    config_lib.validate(c)
  c.sparse.update(end_step=125)
  config_lib.validate(c)
  c.sparse.update(end_step=0)  # end_fraction x training.steps
  config_lib.validate(c)
  # Only GMP reads it.
  c.sparse.update(end_step=130, methods=("static", "rigl"))
  config_lib.validate(c)
