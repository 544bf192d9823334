"""data.source='stream': the record files, and runs that read their batches
from them give the in-memory runs' tickets bit for bit."""

import json
import os
import pathlib
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

import lottery
from lottery import data as data_lib
from lottery import jobs
from lottery import loop
from lottery import models
from lottery import optim
from lottery import step
from lottery import stream
from lottery.errors import LotteryError

from conftest import run_on_devices, run_until_finished, tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
KINDS = ("ticket", "reinit", "random_prune")


def quiet(_):
  pass


def _records(tmp_path, x, y, name="train"):
  path = tmp_path / f"{name}.array_record"
  stream.write_split(path, x, y)
  return stream.Records(path)


def test_records_read_any_index_shape_and_subset(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 4, 3)).astype(np.float32)
  y = rng.integers(0, 7, 50).astype(np.int32)
  r = _records(tmp_path, x, y)
  assert len(r) == 50 and r.example_shape == (4, 3)
  idx = rng.integers(0, 50, (5, 2, 6))
  xb, yb = r.read(idx)
  assert xb.shape == (5, 2, 6, 4, 3) and xb.dtype == np.float32
  assert np.array_equal(xb, x[idx]) and np.array_equal(yb, y[idx])
  rows = np.array([3, 9, 40, 41])
  sub = r.subset(rows)
  assert len(sub) == 4
  xs, ys = sub.subset(np.array([1, 3])).read(np.array([1, 0]))
  assert np.array_equal(xs, x[[41, 9]]) and np.array_equal(ys, y[[41, 9]])
  # Written by renaming: no temporary file is left beside them.
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "train.array_record", "train.json"]


def _tiny(form="scan"):
  """(x, y, params, tx, loop) of mlp_tiny on 64 examples of 6 floats."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 6)).astype(np.float32)
  y = rng.integers(0, 3, 64).astype(np.int32)
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  tx = optim.make_optimizer(lottery.base_config().training)
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn), form=form)
  return x, y, params, tx, lp


@pytest.mark.parametrize("form", ["scan", "python"])
def test_streamed_batches_match_memory(tmp_path, form):
  x, y, params, tx, lp = _tiny(form)
  mem = loop.put_data(x, y, x[:10], y[:10])
  streamed = loop.stream_data(_records(tmp_path, x, y),
                              _records(tmp_path, x[:10], y[:10], "test"))
  idx = loop.batch_indices(64, 16, 0, 0, 10)
  lrs = np.full(10, 0.05, np.float32)
  s1, l1 = lp.run(step.init_state(params, tx), mem, idx, lrs)
  s2, l2 = lp.run(step.init_state(params, tx), streamed, idx, lrs)
  assert np.array_equal(l1, l2)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    assert np.array_equal(a, b)


def test_a_long_streamed_chunk_reads_at_most_stream_call_bytes_a_call(
    tmp_path, monkeypatch):
  """The host holds a call's batches, not a chunk's: one 19-step chunk, at
  a cap of 5 steps' bytes (28-byte records, batch 16), is read as calls of
  5, 5, 5 and 4 steps and trains as one call does. Without the cap a run's
  peak memory grows with its chunks' length (docs/performance.md)."""
  x, y, params, tx, lp = _tiny()
  train = _records(tmp_path, x, y)
  data = loop.stream_data(train, _records(tmp_path, x[:10], y[:10], "test"))
  kw = dict(stop=19, lr_fn=lambda a, b: np.full(b - a, 0.05, np.float32),
            batch_size=16, data_seed=3, eval_every=19)
  s1, h1, _ = loop.train(lp, step.init_state(params, tx), data, **kw)
  read = []
  real = train.read
  monkeypatch.setattr(train, "read",
                      lambda idx: read.append(idx.shape) or real(idx))
  monkeypatch.setattr(loop, "STREAM_CALL_BYTES", 5 * 16 * 28)
  s2, h2, _ = loop.train(lp, step.init_state(params, tx), data, **kw)
  assert train.dtype.itemsize == 28
  assert read == [(5, 16), (5, 16), (5, 16), (4, 16)]
  assert h1 == h2
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    assert np.array_equal(a, b)


def test_streamed_evaluation_counts_like_memory(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(23, 6)).astype(np.float32)
  y = rng.integers(0, 3, 23).astype(np.int32)
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  tx = optim.make_optimizer(lottery.base_config().training)
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn))
  state = step.init_state(params, tx)
  mem = loop.put_data(x, y, x, y, eval_batch=10)  # 3 batches, 7 padded.
  r = _records(tmp_path, x, y)
  streamed = loop.stream_data(r, r, r.subset(np.arange(5)), eval_batch=10)
  a = lp.evaluate(state, mem)
  b = lp.evaluate(state, streamed)
  assert a["accuracy"] == b["accuracy"]
  assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
  logits = model.apply({"params": params}, x[:5])
  assert b["val_accuracy"] == pytest.approx(
      float(np.mean(np.argmax(logits, -1) == y[:5])), abs=1e-7)
  stacked = loop.stack_states([state, state])
  c = lp.evaluate(stacked, streamed)
  assert c["accuracy"] == [a["accuracy"]] * 2


_SPLIT_EVAL = r"""
import json, pathlib, sys
import jax
import numpy as np
import lottery
from lottery import loop, models, optim, parallel, step, stream
rng = np.random.default_rng(1)
x = rng.normal(size=(23, 6)).astype(np.float32)
y = rng.integers(0, 3, 23).astype(np.int32)
path = pathlib.Path(sys.argv[1]) / "test.array_record"
stream.write_split(path, x, y)
records = stream.Records(path)
parts = []
real_read = stream.Records.read
def counted(self, idx):
  parts.append(int(idx.size))
  return real_read(self, idx)
stream.Records.read = counted
model = models.get("mlp_tiny", 3)
tx = optim.make_optimizer(lottery.base_config().training)
apply_fn = step.flax_apply(model)
states = [step.init_state(model.init(jax.random.key(i), x[:1])["params"], tx,
                          seed=i) for i in range(2)]
data = loop.stream_data(records, records, records.subset(np.arange(5)),
                        eval_batch=10)
out = {"devices": jax.device_count()}
for name, reps, devices in (("one", 1, 1), ("one_stacked", 2, 1),
                            ("data2", 1, 2), ("data4", 1, 4),
                            ("replicas2_data2", 2, 4)):
  mesh = parallel.make_mesh(reps, 8, jax.devices()[:devices])
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn), mesh=mesh)
  state = states[0] if reps == 1 else loop.stack_states(states)
  if mesh is not None:
    state = parallel.put_tree(state, parallel.state_sharding(mesh, state,
                                                             reps > 1))
  parts.clear()
  metrics = lp.evaluate(state, data)
  read = parts[:]
  # The compiled evaluation of a batch laid out as the loop lays it.
  idx = np.arange(12)[None]
  batch = (*lp._read_parts(records.read, idx, records.example_shape),
           lp._indices(idx >= 0, False, 1))
  # (Unrolled replicates on one device evaluate in several programs; no
  # collectives to look for there.)
  hlo = "" if reps > 1 and lp.replicas == "unroll" else lp._fns[reps > 1][
      "evaluate"].lower(state.params, state.model_state,
                        *batch).compile().as_text()
  out[name] = {"metrics": metrics, "mesh": parallel.describe(mesh),
               "parts": read, "all_gather": "all-gather" in hlo,
               "all_reduce": "all-reduce" in hlo}
print(json.dumps(out))
"""


def test_streamed_evaluation_splits_over_devices(tmp_path):
  """On 4 fake devices, each device's part of an evaluation batch is read
  on its own (the padding of a batch that does not divide is not read), the
  devices sum their slices (all-reduce, no all-gather), and the metrics are
  those of one device: the accuracy exactly, the loss to float32 rounding."""
  out = run_on_devices(_SPLIT_EVAL, str(tmp_path), devices=4)
  assert out["devices"] == 4
  one = out["one"]
  # One device: the test set's batches of 10, 10, 3 and the 5 validation
  # examples, each read whole.
  assert one["parts"] == [10, 10, 3, 5] and not one["all_reduce"]
  # Test batches of 10 over 2 devices: halves of 5 (the last batch's 3 in
  # one); over 4, padded to 12: parts of 3 (the padding, 2 of the second
  # batch's and 3 of the last's on each of 3 devices, not read).
  # The validation set's 5 examples: one batch, padded to 6 (2 devices: 3
  # and 2) or 8 (4: 2, 2, 1, 0). Both replicates of a stacked state
  # evaluate the same parts, read once.
  want = {"data2": [5, 5, 5, 5, 3, 0, 3, 2],
          "data4": [3, 3, 3, 1, 3, 3, 3, 1, 3, 0, 0, 0, 2, 2, 1, 0],
          "replicas2_data2": [5, 5, 5, 5, 3, 0, 3, 2]}
  for name, parts in want.items():
    got = out[name]
    assert sorted(got["parts"]) == sorted(parts), (name, got["parts"])
    assert got["all_reduce"] and not got["all_gather"], name
    m = got["metrics"]
    ref = out["one_stacked" if name.startswith("replicas") else "one"]
    for k in ("accuracy", "val_accuracy"):
      assert m[k] == ref["metrics"][k], (name, k)
    for k in ("loss", "val_loss"):
      assert m[k] == pytest.approx(ref["metrics"][k], rel=1e-6), (name, k)
  assert out["data4"]["mesh"].startswith("replicas=1 data=4")
  assert out["replicas2_data2"]["mesh"].startswith("replicas=2 data=2")
  # The two replicates differ (their own initializations).
  assert out["one_stacked"]["metrics"]["loss"][0] == one["metrics"]["loss"]
  assert out["one_stacked"]["metrics"]["loss"][1] != one["metrics"]["loss"]


def _tickets_equal(wa, wb, rounds, kinds=KINDS):
  for r in range(rounds + 1):
    for kind in (("ticket",) if r == 0 else kinds):
      a = lottery.load_ticket(wa, r, kind)
      b = lottery.load_ticket(wb, r, kind)
      for f in ("mask", "rewind_params", "trained_params"):
        la, lb = jax.tree.leaves(getattr(a, f)), jax.tree.leaves(getattr(b, f))
        assert len(la) == len(lb)
        assert all(np.array_equal(x, y) for x, y in zip(la, lb)), (r, kind, f)
      assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]


@pytest.mark.parametrize("extra", [
    {},
    {"seeds.num": 2, "pruning.rewind_step": 5},
    {"data.validation_size": 32, "training.loop": "python"},
], ids=["plain", "replicates", "validation-python"])
def test_stream_run_gives_memory_tickets_bit_for_bit(npz_path, tmp_path,
                                                     extra):
  for source in ("memory", "stream"):
    lottery.run(tiny(npz_path, **{"data.source": source, **extra}),
                tmp_path / source, log=quiet)
  _tickets_equal(tmp_path / "memory", tmp_path / "stream", 2)
  # The same metrics (the test sets fit one evaluation batch: even the
  # losses are equal).
  assert _strip_times(lottery.summary(tmp_path / "stream")["rounds"]) == \
      _strip_times(lottery.summary(tmp_path / "memory")["rounds"])


def _strip_times(node):
  if isinstance(node, dict):
    return {k: _strip_times(v) for k, v in node.items() if k != "time_s"}
  if isinstance(node, list):
    return [_strip_times(v) for v in node]
  return node


class _Interrupt(Exception):
  pass


def interrupt_after_saves(monkeypatch, saves) -> None:
  """Raises _Interrupt just after the mid-run checkpoints numbered `saves`
  (1, 2, ... over the test) are written."""
  real_save = jobs.MidRun.save
  calls = {"save": 0}

  def save(self, *a, **k):
    real_save(self, *a, **k)
    calls["save"] += 1
    if calls["save"] in saves:
      raise _Interrupt()
  monkeypatch.setattr(jobs.MidRun, "save", save)


def test_interrupted_stream_run_resumes_bit_exact(npz_path, tmp_path,
                                                  monkeypatch):
  cfg = tiny(npz_path, **{"data.source": "stream", "pruning.rewind_step": 5})
  lottery.run(cfg, tmp_path / "ref", log=quiet)
  interrupt_after_saves(monkeypatch, (1, 3))
  interruptions = run_until_finished(cfg, tmp_path / "run", _Interrupt)
  assert interruptions == 2
  _tickets_equal(tmp_path / "ref", tmp_path / "run", 2)
  # No reading thread outlives its run.
  assert not [t for t in threading.enumerate()
              if t.name == "lottery-prefetch"]


def test_unknown_source_is_refused(npz_path, tmp_path):
  with pytest.raises(LotteryError, match=r"^data\.source: .*'disk'"):
    lottery.run(tiny(npz_path, **{"data.source": "disk"}), tmp_path / "w",
                log=quiet)
  assert not (tmp_path / "w").exists()


def _cache_files(npz_path, cache):
  c = tiny(npz_path)
  c.data.cache_dir = str(cache)
  root = stream.cache_root(c.data, data_lib.contents(c.data))
  return root / "train.array_record", root / "train.json"


def test_the_cache_and_the_facts_follow_the_datas_bytes(npz_path, tmp_path,
                                                        monkeypatch):
  """A dataset of other bytes (a TFDS dataset relabelled in place keeps its
  files' names and sizes) gets a cache of its own, and a run on the first
  refuses it."""
  cache = tmp_path / "cache"
  cfg = tiny(npz_path, **{"data.source": "stream", "pruning.rounds": 0,
                          "data.cache_dir": str(cache)})
  monkeypatch.setattr(data_lib, "contents",
                      lambda data, **_: "sha256:" + "ab" * 32)
  lottery.run(cfg, tmp_path / "a", log=quiet)
  assert (cache / "records" / ("ab" * 16) / "train.json").exists()
  facts = json.loads((tmp_path / "a" / "facts.json").read_text())
  assert facts["data_contents"] == "sha256:" + "ab" * 32
  monkeypatch.setattr(data_lib, "contents",
                      lambda data, **_: "sha256:" + "cd" * 32)
  with pytest.raises(LotteryError, match=r"holds a run on different data "
                     r"\(data_contents: 'sha256:(ab)+' -> 'sha256:(cd)+'\); "
                     r"use a new --workdir$"):
    lottery.run(cfg, tmp_path / "a", log=quiet)
  lottery.run(cfg, tmp_path / "b", log=quiet)
  assert (cache / "records" / ("cd" * 16) / "train.json").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_damaged_cache_file_is_refused_in_one_line(npz_path, tmp_path,
                                                   damage):
  cache = tmp_path / "cache"
  cfg = tiny(npz_path, **{"data.source": "stream", "pruning.rounds": 0,
                          "data.cache_dir": str(cache)})
  lottery.run(cfg, tmp_path / "first", log=quiet)
  records, header = _cache_files(npz_path, cache)
  assert records.exists() and header.exists()
  size = records.stat().st_size
  if damage == "truncate":
    with open(records, "r+b") as f:
      f.truncate(size // 2)
    named = records
  elif damage == "garbage":
    records.write_bytes(b"\0" * size)  # The header's size, nothing readable.
    named = records
  else:
    header.write_text("{not json")
    named = header
  with pytest.raises(LotteryError) as e:
    lottery.run(cfg, tmp_path / "w", log=quiet)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("data.source: ")
  assert str(named) in msg and "delete it" in msg
  assert not (tmp_path / "w").exists()
  # Deleted, it is written again and the run goes through.
  named.unlink()
  lottery.run(cfg, tmp_path / "w", log=quiet)
  assert records.exists()


def test_cache_is_written_once(npz_path, tmp_path):
  cache = tmp_path / "cache"
  cfg = tiny(npz_path, **{"data.source": "stream", "pruning.rounds": 0,
                          "data.cache_dir": str(cache)})
  lottery.run(cfg, tmp_path / "a", log=quiet)
  records, header = _cache_files(npz_path, cache)
  stamp = (records.stat().st_mtime_ns, header.stat().st_mtime_ns)
  lottery.run(cfg, tmp_path / "b", log=quiet)
  assert (records.stat().st_mtime_ns, header.stat().st_mtime_ns) == stamp
  assert json.loads(header.read_text())["count"] == 256
  assert not [p for p in records.parent.iterdir() if p.suffix == ".tmp"]


def test_a_written_cache_is_read_without_loading_the_dataset(
    npz_path, tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  cfg = tiny(npz_path, **{"data.source": "stream", "data.cache_dir":
                          str(cache), "data.validation_size": 32})
  lottery.run(cfg, tmp_path / "first", log=quiet)  # Loads, writes the cache.
  _, header = _cache_files(npz_path, cache)
  h = json.loads(header.read_text())
  assert (h["name"], h["num_classes"]) == (os.path.basename(npz_path), 3)
  loads = []
  real_load = data_lib.load
  monkeypatch.setattr(data_lib, "load",
                      lambda data: loads.append(data.name) or real_load(data))
  lottery.run(cfg, tmp_path / "second", log=quiet)
  assert loads == []  # The host holds one example of each split.
  _tickets_equal(tmp_path / "first", tmp_path / "second", 2)
  # IMP's error barriers evaluate the training arrays: loaded.
  barrier = tiny(npz_path, **{"data.source": "stream", "data.cache_dir":
                              str(cache), "pruning.level_barrier": True,
                              "pruning.rounds": 1})
  lottery.run(barrier, tmp_path / "barrier", log=quiet)
  assert loads == ["npz"]
  # A header without the dataset's name and classes (written by an older
  # version): loaded, and the same tickets.
  del h["name"], h["num_classes"]
  header.write_text(json.dumps(h))
  lottery.run(cfg, tmp_path / "old", log=quiet)
  assert loads == ["npz", "npz"]
  _tickets_equal(tmp_path / "first", tmp_path / "old", 2)


def test_prefetch_order_errors_and_early_stop():
  assert [v for _, v in stream.prefetch(range(5), lambda i: i * i)] == [
      0, 1, 4, 9, 16]
  def load(i):
    if i == 2:
      raise LotteryError("data.source: bad")
    return i
  got = []
  with pytest.raises(LotteryError, match="bad"):
    for i, _ in stream.prefetch(range(5), load):
      got.append(i)
  assert got == [0, 1]
  it = stream.prefetch(iter(range(10**6)), lambda i: i)
  next(it)
  it.close()
  for t in threading.enumerate():
    if t.name == "lottery-prefetch":
      t.join(timeout=5)
      assert not t.is_alive()


_PARTS = r"""
import jax
jax.config.update("jax_num_cpu_devices", 2)
import numpy as np
from lottery import parallel
mesh = parallel.make_mesh(1, 8)
read_rows = []
def read(i):
  read_rows.append(i.shape)
  return np.repeat(i[..., None], 3, -1).astype(np.float32), i
idx = np.arange(24).reshape(3, 8)
sx = parallel.batch_sharding(mesh, False, 3, leading=1)
sy = parallel.batch_sharding(mesh, False, 2, leading=1)
x, y = parallel.put_parts(read, idx, (3,), sx, sy)
assert np.array_equal(np.asarray(y), idx)
assert np.array_equal(np.asarray(x)[..., 0], idx)
print(sorted(read_rows))
"""


def test_each_device_part_is_read_once():
  """With the batch split over 2 devices, `put_parts` reads each device's
  half of the indices once (a process reads only its own devices' parts)."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", _PARTS], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[(3, 4), (3, 4)]"


@pytest.mark.slow
def test_mnist1d_stream_gives_memory_tickets(tmp_path):
  for source in ("memory", "stream"):
    c = lottery.base_config()
    c.data.source = source
    c.training.update(steps=60, eval_every=30, checkpoint_every=30)
    c.pruning.update(rounds=1)
    lottery.run(c, tmp_path / source, log=quiet)
  _tickets_equal(tmp_path / "memory", tmp_path / "stream", 1)


@pytest.mark.slow
def test_stream_sparse_training_matches_memory(npz_path, tmp_path):
  """Mask updates inside the compiled loop (SET, RigL, GMP) take their
  batches from the stream as from memory."""
  runs = {}
  for source in ("memory", "stream"):
    c = tiny(npz_path, **{"method": "sparse", "data.source": source,
                          "sparse.densities": (0.25,),
                          "sparse.update_every": 5, "sparse.end_step": 15})
    runs[source] = lottery.sparse.run(c, tmp_path / source,
                                      log=quiet)["runs"]
  assert _strip_times(runs["memory"]) == _strip_times(runs["stream"])
  for r in runs["stream"]:
    coords = {k: r[k] for k in ("method", "distribution", "target_density",
                                "seed")}
    a = lottery.load_ticket(tmp_path / "memory", **coords)
    b = lottery.load_ticket(tmp_path / "stream", **coords)
    for f in ("mask", "trained_params"):
      assert all(np.array_equal(x, y) for x, y in zip(
          jax.tree.leaves(getattr(a, f)), jax.tree.leaves(getattr(b, f)))), (
              coords, f)


def test_a_cause_cut_inside_a_parenthesis_drops_it():
  long = RuntimeError("Corrupted Riegeli/records file: chunk header hash "
                      "mismatch (computed 0x5d3a8cb64, stored 0x1234567890ab)")
  assert stream.cause(long) == ("RuntimeError: Corrupted Riegeli/records "
                                "file: chunk header hash mismatch")
  assert stream.cause(OSError("no such file (x)")) == (
      "OSError: no such file (x)")
  assert stream.cause(OSError("/data/(copy")) == "OSError: /data/(copy"
  nested = OSError("bad chunk (at 12 (of 40) records, offset " + "9" * 80)
  assert stream.cause(nested) == "OSError: bad chunk"
