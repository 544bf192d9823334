"""What a user sees when a run walks into a missing dataset or a full disk:
one line on stderr, nothing from the libraries underneath."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _run(*args, cwd):
  return subprocess.run([sys.executable, "-m", "experiments.run", *args],
                        cwd=cwd, env=ENV, capture_output=True, text=True,
                        timeout=300)


def test_unprepared_tfds_dataset_is_one_line(tmp_path):
  """TFDS's absl warnings ('Variant folder ... has no dataset_info.json')
  do not come before the one-line error."""
  pytest.importorskip("tensorflow_datasets")
  res = _run("--config=lenet_mnist:quick", f"--workdir={tmp_path / 'wd'}",
             f"--config.data.data_dir={tmp_path / 'no_tfds'}", cwd=tmp_path)
  assert res.returncode == 1, res.stderr
  lines = res.stderr.splitlines()
  assert len(lines) == 1, res.stderr
  assert lines[0].startswith("error: data.data_dir: TFDS dataset 'mnist' is "
                             "not prepared;")


@pytest.mark.slow
def test_full_disk_is_one_error_without_event_loop_tracebacks(tmp_path):
  """A disk that fills while a ticket is written: the no-space error, and
  none of tensorstore's 'RuntimeError: Event loop is closed' tracebacks or
  asyncio's 'Task exception was never retrieved' reports (orbax's aborted
  save; each came in a third to a half of the runs, so 3 runs)."""
  if os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("needs root to mount a tmpfs")
  tiny = tmp_path / "tiny"
  tiny.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                     str(tiny)], capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    for i in range(3):
      res = _run("--config=mnist1d:quick", f"--workdir={tiny / f'wd{i}'}",
                 cwd=tmp_path)
      assert res.returncode == 1, res.stderr
      assert "Traceback" not in res.stderr, res.stderr
      assert "Event loop is closed" not in res.stderr, res.stderr
      assert "never retrieved" not in res.stderr, res.stderr
      last = res.stderr.splitlines()[-1]
      assert last.startswith("error: workdir: no space left on device"), last
      shutil.rmtree(tiny / f"wd{i}")
  finally:
    subprocess.run(["umount", str(tiny)], check=False)
