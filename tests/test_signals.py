"""Ctrl-C and SIGTERM at any moment of a launcher: one line, exit 130 / 143
(experiments/signals.py)."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
LINE = r"interrupted at .+; rerun the same command to resume"


def _run(workdir, npz, steps=600):
  return [sys.executable, "-m", "experiments.imp", f"--workdir={workdir}",
          "--config=mnist1d:quick", "--config.data.name=npz",
          f"--config.data.path={npz}", "--config.model.name=mlp_tiny",
          f"--config.training.steps={steps}",
          "--config.training.batch_size=16",
          "--config.training.eval_every=10",
          "--config.training.checkpoint_every=50",
          "--config.pruning.rounds=1"]


def _check(returncode, stderr, signum):
  assert returncode == 128 + signum, stderr
  assert "Traceback" not in stderr and "Exception ignored" not in stderr, (
      stderr)
  assert re.fullmatch(LINE, stderr.strip().splitlines()[-1]), stderr


def _wait_for_handler(pid: int, signum: int = signal.SIGTERM,
                      timeout: float = 60) -> None:
  """Waits until process `pid` catches `signum` (its SigCgt mask in
  /proc): a signal during Python's own start-up, before the launcher's
  first line installs the handler, keeps Python's default (documented), and
  on a loaded machine that start-up can outlast any fixed delay. SIGTERM by
  default: Python catches SIGINT from its start, only the launcher's
  `signals.install` catches SIGTERM, and it installs both at once."""
  status = pathlib.Path(f"/proc/{pid}/status")
  if not status.exists():
    return  # Not Linux: fixed delays only.
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    caught = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status.read_text(), re.M)
    if caught and int(caught[1], 16) >> (signum - 1) & 1:
      return
    time.sleep(0.005)
  raise AssertionError(f"process {pid} never installed a handler for "
                       f"{signum}")


@pytest.mark.slow
@pytest.mark.parametrize("signum,delay", [
    (signal.SIGINT, 0.05), (signal.SIGINT, 0.3), (signal.SIGINT, 0.8),
    (signal.SIGINT, 1.5), (signal.SIGINT, 2.2), (signal.SIGINT, 3.0),
    (signal.SIGTERM, 0.05), (signal.SIGTERM, 1.5)])
def test_a_signal_at_any_moment_gives_the_one_line(npz_path, tmp_path,
                                                   signum, delay):
  """During the imports, start-up, compilation and training alike (from
  the moment the launcher's first line installed the handler)."""
  proc = subprocess.Popen(_run(tmp_path / "wd", npz_path), cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  _wait_for_handler(proc.pid)
  time.sleep(delay)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=120)
  _check(proc.returncode, err, signum)


@pytest.mark.slow
def test_a_signal_once_the_run_is_done(npz_path, tmp_path):
  """After the last line: the one line and 130, or a clean exit 0."""
  proc = subprocess.Popen(_run(tmp_path / "wd", npz_path, steps=20),
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  err = []
  reader = threading.Thread(target=lambda: err.extend(proc.stderr),
                            daemon=True)
  reader.start()
  for line in proc.stdout:
    if line.startswith("round  1/1"):
      break
  proc.stdout.read()  # Up to its end: the run is over.
  proc.send_signal(signal.SIGINT)
  proc.wait(60)
  reader.join(10)
  if proc.returncode != 0:
    _check(proc.returncode, "".join(err), signal.SIGINT)


_DROPPED = textwrap.dedent("""
    import gc, os, signal, sys, weakref
    from experiments import signals
    signals.install()
    signals.running(lambda: "here", lambda: None)

    def _xla_gc_callback(phase, info):  # JAX's name: a known dropper.
      os.kill(os.getpid(), signal.SIGINT)
      for _ in range(10000): pass

    class Ref:
      pass

    def callback(_):  # An unknown one: its exception is dropped.
      os.kill(os.getpid(), signal.SIGINT)
      for _ in range(10000): pass

    for case in ("gc", "weakref"):
      try:
        if case == "gc":
          gc.callbacks.append(_xla_gc_callback)
          gc.collect()
          gc.callbacks.remove(_xla_gc_callback)
        else:
          r = Ref(); w = weakref.ref(r, callback); del r
        for _ in range(10 ** 8): pass
        print(case, "lost")
      except signals.Interrupted as e:
        print(case, "caught", e.signum)
        signals.delivered()
    """)


@pytest.mark.slow
def test_a_signal_dropped_by_a_callback_is_delivered_again():
  res = subprocess.run([sys.executable, "-c", _DROPPED], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=60)
  assert res.stdout.split("\n")[:2] == ["gc caught 2", "weakref caught 2"], (
      res.stdout + res.stderr)
  assert "Exception ignored" not in res.stderr and res.returncode == 0, (
      res.stderr)


_IN_IMPORT = textwrap.dedent("""
    import os, pathlib, signal, sys, tempfile
    from experiments import signals
    signals.install()
    signals.running(lambda: "here", lambda: None)
    d = tempfile.mkdtemp()
    pathlib.Path(d, "slow_module.py").write_text(
        "import os, signal\\n"
        "os.kill(os.getpid(), signal.SIGINT)\\n"
        "for _ in range(10 ** 6): pass\\n"
        "DONE = True\\n")
    sys.path.insert(0, d)
    try:
      import slow_module
      for _ in range(10 ** 8): pass
      print("lost")
    except signals.Interrupted as e:
      print("imported" if "slow_module" in sys.modules else "in import",
            e.signum)
    """)


@pytest.mark.slow
def test_a_signal_inside_an_import_waits_for_its_end():
  """Raising inside the import system could leave its global lock held (a
  writer thread importing a module then waits forever, and the run for
  the writer): the signal is delivered once the import is over."""
  res = subprocess.run([sys.executable, "-c", _IN_IMPORT], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=60)
  assert res.stdout.split() == ["imported", "2"], res.stdout + res.stderr
  assert res.returncode == 0, res.stderr
