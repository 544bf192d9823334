"""Several hosts: two local processes joined by jax.distributed (CPU, gloo)
train one run; process 0 alone writes the workdir."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import lottery
from lottery import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs the launcher, recording every write this process makes under the
# workdir (Python's audit events: open for writing, mkdir, rename, remove).
_AUDITED = r"""
import json, os, sys
workdir = os.path.abspath(sys.argv[1])
writes = []
def hook(event, args):
  if event == "open":
    path, mode, flags = args
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
    if writing and isinstance(path, (str, bytes, os.PathLike)) and \
        os.path.abspath(os.fsdecode(path)).startswith(workdir):
      writes.append(os.fsdecode(path))
  elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove",
                 "shutil.rmtree", "os.rmdir"):
    path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
    if os.path.abspath(path).startswith(workdir):
      writes.append(f"{event} {path}")
sys.addaudithook(hook)
# And counts the examples it reads from each split's stream record file.
from lottery import stream
read = {"train": 0, "test": 0}
real_read = stream.Records.read
def counted(self, idx):
  read[self.path.stem] += idx.size
  return real_read(self, idx)
stream.Records.read = counted
import atexit
atexit.register(lambda: print("WRITES " + json.dumps(writes), flush=True))
atexit.register(lambda: print(f"TRAIN_READ {read['train']} TEST_READ "
                              f"{read['test']}", flush=True))
sys.argv = [sys.argv[0]] + sys.argv[2:]
import runpy
runpy.run_module("experiments.imp", run_name="__main__")
"""


def _reads(out: str, name: str) -> int:
  """The count the audited launcher printed after `name`."""
  return int(out.split(f"{name} ", 1)[1].split()[0])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _args(workdir, npz, source="memory"):
  return [f"--workdir={workdir}", "--config=mnist1d:quick",
          f"--config.data.source={source}",
          "--config.data.name=npz", f"--config.data.path={npz}",
          "--config.model.name=mlp_tiny", "--config.training.steps=40",
          "--config.training.batch_size=16", "--config.training.eval_every=20",
          "--config.training.checkpoint_every=20", "--config.pruning.rounds=1"]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["memory", "stream"])
def test_two_processes_match_one(npz_path, tmp_path, source):
  """Streamed, each process reads only its own half of every batch from the
  record files (`parallel.put_parts`)."""
  # A data cache of its own: the one-process run writes the record files
  # (no other test's run of the same .npz has).
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "LOTTERY_NO_COMPILE_CACHE": "1",
         "LOTTERY_CACHE": str(tmp_path / "cache")}
  env.pop("XLA_FLAGS", None)
  one = subprocess.run([sys.executable, "-c", _AUDITED, str(tmp_path / "one"),
                        *_args(tmp_path / "one", npz_path, source)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]
  port = _free_port()
  wd = tmp_path / "two"
  procs = [subprocess.Popen(
      [sys.executable, "-c", _AUDITED, str(wd), *_args(wd, npz_path, source),
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  writes = [json.loads(out.split("WRITES ", 1)[1].splitlines()[0])
            for out, _ in outs]
  assert writes[0], "process 0 wrote nothing"
  assert writes[1] == [], writes[1][:5]  # Process 1 never writes.
  # Streamed, each process reads half of every batch: 4 jobs (round 0's
  # ticket, round 1's and its 2 controls) of 40 steps of 16 examples, and
  # the first example, to build the model (the cache written by the
  # one-process run, the dataset is not loaded).
  reads = [_reads(out, "TRAIN_READ") for out, _ in outs]
  assert reads == ([4 * 40 * 16 // 2 + 1] * 2 if source == "stream"
                   else [0, 0])
  # And half of every evaluation batch of the test set (64 examples, one
  # batch, split 32 + 32): 4 jobs evaluated at steps 20 and 40, where the
  # one-process run (which wrote the cache from the loaded dataset) reads
  # each batch whole.
  test_reads = [_reads(out, "TEST_READ") for out, _ in outs]
  if source == "stream":
    assert _reads(one.stdout, "TEST_READ") == 4 * 2 * 64
    assert test_reads == [4 * 2 * 64 // 2 + 1] * 2  # +1: the model's example.
  else:
    assert test_reads == [0, 0]
  # Process 0 reports; its mesh line names both processes' devices.
  assert "mesh: replicas=1 data=2 (2 devices; 2 processes)" in outs[0][1]
  for r in range(2):
    a = lottery.load_ticket(tmp_path / "one", r)
    b = lottery.load_ticket(wd, r)
    assert a.metrics["density"] == b.metrics["density"]
    # The two processes' training sums gradients in another order, so the
    # weights (and with them an accuracy) may differ by float rounding.
    assert abs(a.metrics["test_accuracy"] - b.metrics["test_accuracy"]) <= 0.02
    for x, y in zip(jax.tree.leaves(a.trained_params),
                    jax.tree.leaves(b.trained_params)):
      np.testing.assert_allclose(x, y, atol=1e-4)


def _two_processes(args: list[list[str]], env: dict, timeout: int = 200,
                   signal_after: float | None = None
                   ) -> list[subprocess.CompletedProcess]:
  """Runs experiments.imp as processes 0 and 1 of one run, process i with
  `args[i]`; with `signal_after`, both get SIGTERM that many seconds in."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.imp", *a,
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i, a in enumerate(args)]
  if signal_after is not None:
    try:
      procs[0].wait(timeout=signal_after)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.terminate()
  outs = [p.communicate(timeout=timeout) for p in procs]
  return [subprocess.CompletedProcess(p.args, p.returncode, o, e)
          for p, (o, e) in zip(procs, outs)]


@pytest.mark.slow
def test_processes_that_start_apart_stop_together(npz_path, tmp_path):
  """Two processes with other configs, or other workdirs, are refused on
  both before anything is written; a refusal on one process alone (the
  workdir in use by another run) stops the other too, naming it; SIGTERM
  stops both (JAX's preemption notifier takes it when they join)."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "LOTTERY_CACHE": str(tmp_path / "cache")}
  env.pop("XLA_FLAGS", None)
  wd = tmp_path / "wd"
  args = _args(wd, npz_path)
  for other in (args + ["--config.training.learning_rate=0.01"],
                _args(tmp_path / "other", npz_path)):
    res = _two_processes([args, other], env)
    for r in res:
      assert r.returncode == 1, r.stderr[-2000:]
      assert r.stderr.strip().splitlines()[-1].startswith(
          "error: hosts: process 1 starts another run than process 0"), (
              r.stderr[-2000:])
    assert not wd.exists() and not (tmp_path / "other").exists()
  # The workdir in use by a one-process run of the same config.
  long = ["--config.training.steps=100000", "--config.training.eval_every=1000",
          "--config.training.checkpoint_every=1000"]
  longer = lambda a: [x for x in a if x.split("=")[0] not in
                      {y.split("=")[0] for y in long}] + long
  holder = subprocess.Popen([sys.executable, "-m", "experiments.imp",
                             *longer(args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  try:
    for _ in range(600):
      if (wd / "config.json").exists() or holder.poll() is not None:
        break
      time.sleep(0.1)
    res = _two_processes([longer(args)] * 2, env)
  finally:
    holder.kill()
    holder.wait()
  said = [r.stderr.strip().splitlines()[-1] for r in res]
  assert [r.returncode for r in res] == [1, 1], said
  assert said[0].startswith("error: workdir: ") and "in use" in said[0], said
  assert said[1] == said[0] + " (on process 0)"
  # SIGTERM: a long run, stopped on both processes with the signal's line.
  long_args = longer(_args(tmp_path / "long", npz_path))
  res = _two_processes([long_args, long_args], env, signal_after=20)
  for r in res:
    assert r.returncode == 143, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("interrupted at "), (
        r.stderr[-2000:])


def test_bad_host_flags_are_refused_in_one_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  for flags_, want in (
      (["--num_processes=2"], "error: coordinator_address: needed with"),
      (["--coordinator_address=foo", "--num_processes=2"],
       "error: coordinator_address: must be HOST:PORT (got 'foo')"),
      (["--coordinator_address=localhost:1", "--num_processes=2",
        "--process_id=2"], "error: process_id: must be in [0, 2) (got 2)"),
      # --dry_run checks them too (joining nothing).
      (["--coordinator_address=localhost:1", "--num_processes=2",
        "--process_id=2", "--dry_run"],
       "error: process_id: must be in [0, 2) (got 2)")):
    res = subprocess.run([sys.executable, "-m", "experiments.imp",
                          f"--workdir={tmp_path / 'w'}", *flags_], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().startswith(want), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


class _Device:
  """A stand-in for a device of a multi-host run: its id and process."""

  def __init__(self, i, process):
    self.id, self.process_index = i, process


def test_a_batch_that_leaves_a_host_idle_is_refused():
  """2 hosts of 2 devices: batch 6 splits over 2 devices, both of host 0;
  host 1 would feed nothing."""
  devices = [_Device(i, i // 2) for i in range(4)]
  with pytest.raises(lottery.LotteryError) as e:
    parallel.make_mesh(1, 6, devices)
  assert str(e.value) == (
      "training.batch_size: 6 does not divide across the 2 processes' 4 "
      "devices (the batch splits over 2 of them, leaving process 1 without "
      "work); use a multiple of 4")
  # 2 replicates, batch 7: the mesh takes 2 devices, both of host 0.
  with pytest.raises(lottery.LotteryError, match="^training.batch_size: 7 "):
    parallel.make_mesh(2, 7, devices)
