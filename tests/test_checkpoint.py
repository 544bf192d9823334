"""What is on disk: verified checkpoints, one writer per workdir, crash and
full-disk safety, path checks, permissions, strict JSON."""

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import lottery
from lottery import checkpoint
from lottery import loop
from lottery import tickets
from lottery import workdir

ROOT = pathlib.Path(__file__).resolve().parent.parent


def quiet(_):
  pass


@pytest.fixture
def umask():
  """Sets the umask for one test (the default of most systems: 022)."""
  old = os.umask(0o022)
  yield lambda m: os.umask(m)
  os.umask(old)


def _tree():
  @jax.jit
  def make(x):
    return {"dense": {"kernel": x * 1.5, "bias": jnp.zeros(3, jnp.float32)},
            "mask": {"dense": {"kernel": x > 0}},
            "step": jnp.asarray(7, jnp.int32),
            "counts": jnp.arange(-3, 3, dtype=jnp.int32)}
  x = jnp.asarray([[1.0, -2.0, np.nan], [-np.inf, -0.0, 1e-40]], jnp.float32)
  return jax.device_get(make(x))


def _bits(tree):
  return jax.tree.map(lambda a: (a.dtype.str, a.shape, a.tobytes()), tree)


def test_save_restore_is_bit_exact(tmp_path):
  tree = _tree()
  checkpoint.save(tmp_path / "ck", tree)
  back = checkpoint.restore(tmp_path / "ck")
  assert _bits(back) == _bits(tree)
  assert back["mask"]["dense"]["kernel"].dtype == np.bool_
  assert back["step"].dtype == np.int32 and back["step"].shape == ()


def _damage_cases(path: pathlib.Path):
  """(description, function) pairs, each damaging one file under `path`."""
  files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())
  assert checkpoint.CHECKSUMS in {f.name for f in files}
  assert len(files) >= 8  # Orbax's metadata, manifests, data, checksums.
  def flip(rel, where):
    def f(d):
      p = d / rel
      data = bytearray(p.read_bytes())
      i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
      data[i] ^= 1 << (i % 8)
      p.write_bytes(bytes(data))
    return f
  def truncate(rel):
    return lambda d: (d / rel).write_bytes((d / rel).read_bytes()[:-1])
  def garbage(rel):
    return lambda d: (d / rel).write_bytes(os.urandom(
        max(1, (d / rel).stat().st_size)))
  def delete(rel):
    return lambda d: (d / rel).unlink()
  for rel in files:
    if (path / rel).stat().st_size:
      for where in ("first", "middle", "last"):
        yield f"flip {where} bit of {rel}", flip(rel, where)
      yield f"truncate {rel}", truncate(rel)
    yield f"garbage in {rel}", garbage(rel)
    yield f"delete {rel}", delete(rel)


def test_any_damage_to_any_file_is_refused(tmp_path):
  pristine = tmp_path / "pristine"
  checkpoint.save(pristine, _tree())
  cases = list(_damage_cases(pristine))
  for i, (what, damage) in enumerate(cases):
    d = tmp_path / f"ck{i}"
    shutil.copytree(pristine, d)
    damage(d)
    q = re.escape(repr(str(d)))
    with pytest.raises(lottery.LotteryError,
                       match=f"^workdir: checkpoint {q} is damaged \\(.*\\); "
                             f"delete {q} and rerun the same command$"):
      checkpoint.restore(d)
      pytest.fail(what)
  assert len(cases) > 40


def test_missing_checksums_is_an_incomplete_checkpoint(tmp_path):
  d = tmp_path / "ck"
  checkpoint.save(d, _tree())
  (d / checkpoint.CHECKSUMS).unlink()  # As if killed just before writing it.
  with pytest.raises(lottery.LotteryError, match=r"damaged \(incomplete: "):
    checkpoint.restore(d)


def _rewrite_file_checksums(d):
  """Rewrites CHECKSUMS of checkpoint `d` with its files' present sizes and
  sha256s, consistently, as if `save` had written these files: CHECKSUMS is
  a line '<header> sha256:<hex of the rest>' and JSON with 'files':
  {relative path: [size, sha256]} (the format lottery.checkpoint's doc
  gives)."""
  head, _, body = (d / checkpoint.CHECKSUMS).read_bytes().partition(b"\n")
  digest = hashlib.sha256(body).hexdigest().encode()
  assert head.endswith(b" sha256:" + digest)
  files = {p.relative_to(d).as_posix():
               [p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()]
           for p in sorted(d.rglob("*"))
           if p.is_file() and p.name != checkpoint.CHECKSUMS}
  body = json.dumps({**json.loads(body), "files": files}, indent=1,
                    sort_keys=True).encode()
  head = head[:-64] + hashlib.sha256(body).hexdigest().encode()
  (d / checkpoint.CHECKSUMS).write_bytes(head + b"\n" + body)


def test_array_checksums_catch_what_file_checksums_miss(tmp_path, monkeypatch):
  """Data damaged under consistent file checksums is still refused."""
  pristine = tmp_path / "pristine"
  w = np.random.default_rng(0).normal(size=1024).astype(np.float32)
  checkpoint.save(pristine, {"w": w})
  data = max((pristine / "ocdbt.process_0" / "d").iterdir(),
             key=lambda p: p.stat().st_size)  # The (zstd) data of `w`.
  rel = data.relative_to(pristine)
  size = data.stat().st_size
  caught = []
  for n, i in enumerate(range(0, size, max(1, size // 16))):
    d = tmp_path / f"ck{n}"
    shutil.copytree(pristine, d)
    raw = bytearray((d / rel).read_bytes())
    raw[i] ^= 1 << (i % 8)
    (d / rel).write_bytes(bytes(raw))
    _rewrite_file_checksums(d)
    try:
      back = checkpoint.restore(d)
    except lottery.LotteryError as e:
      caught.append(str(e))
    else:  # A byte that orbax does not read (the file's tail).
      assert back["w"].tobytes() == w.tobytes(), i
  # Most flips give other values, silently as far as orbax is concerned.
  assert sum("arrays differ" in e for e in caught) >= 12, caught
  # Orbax reading other values than were saved.
  real = ocp.Checkpointer.restore
  def restore(self, *a, **k):
    tree = real(self, *a, **k)
    tree["w"].view(np.uint32)[7] ^= 1
    return tree
  monkeypatch.setattr(ocp.Checkpointer, "restore", restore)
  with pytest.raises(lottery.LotteryError,
                     match=r"damaged \(its arrays differ from their checksums"):
    checkpoint.restore(pristine)


def test_restore_of_what_is_not_a_checkpoint(tmp_path):
  with pytest.raises(lottery.LotteryError, match=r"^workdir: checkpoint '.*/nothing' "
                     r"does not exist$"):
    checkpoint.restore(tmp_path / "nothing")
  (tmp_path / "file").write_text("x")
  with pytest.raises(lottery.LotteryError, match=r"not a checkpoint \(not a "):
    checkpoint.restore(tmp_path / "file")
  (tmp_path / "empty").mkdir()
  with pytest.raises(lottery.LotteryError, match=r"^workdir: '.*/empty' is not "
                     r"a checkpoint \(CHECKSUMS missing\)$"):
    checkpoint.restore(tmp_path / "empty")


def test_damage_names_what_to_delete(tmp_path):
  wd = tmp_path / "wd"
  ticket = (wd / tickets.imp_path(3, "reinit"))
  paths = {wd / "progress" / "round_003_reinit_step00000010":
               repr(str(wd / "progress")),
           ticket / "arrays": repr(str(ticket)) + r" \(that ticket's directory\)",
           wd / "rewind_point": re.escape(repr(str(wd / "rewind_point")))
                                + " and " + repr(str(wd / "rounds" /
                                                     "round_000"))}
  for path, target in paths.items():
    checkpoint.save(path, {"x": np.zeros(2, np.float32)})
    (path / "_METADATA").write_text("{}")
    with pytest.raises(lottery.LotteryError,
                       match=f"; delete {target} and rerun the same command$"):
      checkpoint.restore(path)
  checkpoint.remove(ticket / "arrays")
  checkpoint.save(ticket / "arrays", {"trained_params": {"x": np.zeros(2)},
                                      "rewind_params": {"x": np.zeros(2)}})
  (wd / "config.json").write_text("{}")  # A run's workdir.
  (ticket / "metrics.json").write_text('{"density": 0.')
  with pytest.raises(lottery.LotteryError, match=r"^workdir: file .* is "
                     r"damaged \(not valid JSON: .*\); delete .*reinit' "
                     r"\(that ticket's directory\) and rerun the same command$"):
    lottery.load_ticket(wd, 3, "reinit")


def test_write_json_is_strict_and_nulls_non_finite(tmp_path):
  path = tmp_path / "m.json"
  checkpoint.write_json(path, {"a": math.nan, "b": [1.5, math.inf,
                                                    {"c": -math.inf}],
                               "d": (np.float32(np.nan), np.int64(3)),
                               "e": "nan", "f": True})
  def no_constants(name):
    raise AssertionError(f"non-strict JSON: {name}")
  loaded = json.loads(path.read_text(), parse_constant=no_constants)
  # The file carries its checksum; read_json verifies and drops it.
  assert loaded.pop(checkpoint.JSON_CHECKSUM)
  assert loaded == {"a": None, "b": [1.5, None, {"c": None}], "d": [None, 3],
                    "e": "nan", "f": True}
  assert checkpoint.read_json(path) == loaded


def test_json_checksum_catches_any_change(tmp_path):
  """A changed digit, key or value is refused with what to delete; a file
  without a checksum only where asked (a workdir older than checksums)."""
  path = tmp_path / "wd" / "rounds" / "round_001" / "ticket" / "metrics.json"
  checkpoint.write_json(path, {"test_accuracy": 0.601, "history": [
      {"step": 1, "accuracy": 0.601}], "coords": {"round": 1, "n": 2}})
  text = path.read_text()
  for old, new in (("0.601,", "0.600,"), ("0.601\n", "0.600\n"),
                   ('"round": 1', '"round": 0'), ('"n": 2', '"m": 2'),
                   ("_sha256", "_sha257")):
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(lottery.LotteryError, match=(
        r"^workdir: file '.*metrics.json' is damaged \((its content differs "
        r"from its checksum|it has no checksum \(_sha256\))\); delete "
        r"'.*round_001/ticket' \(that ticket's directory\) and rerun the same "
        r"command$")):
      checkpoint.read_json(path)
  path.write_text(text.replace("\n", " \n"))  # Whitespace: same values.
  assert checkpoint.read_json(path)["test_accuracy"] == 0.601
  legacy = tmp_path / "old.json"
  legacy.write_text('{"x": 1}')
  with pytest.raises(lottery.LotteryError, match="it has no checksum"):
    checkpoint.read_json(legacy)
  assert checkpoint.read_json(legacy, unverified_ok=True) == {"x": 1}
  (tmp_path / "wd" / "config.json").write_text("{}")
  assert checkpoint.predates_checksums(tmp_path / "wd")
  checkpoint.write_json(tmp_path / "wd" / "config.json", {})
  assert not checkpoint.predates_checksums(tmp_path / "wd")


def _modes(root):
  return {p.relative_to(root).as_posix(): oct(p.stat().st_mode & 0o777)
          for p in [root, *root.rglob("*")]}


def test_files_get_the_usual_permissions(tmp_path, umask):
  checkpoint.write_json(tmp_path / "j" / "a.json", {"x": 1})
  checkpoint.save(tmp_path / "ck", _tree())
  modes = _modes(tmp_path)
  assert modes["j/a.json"] == oct(0o644)
  ck = {k: v for k, v in modes.items() if k.startswith("ck")}
  assert len(ck) > 8
  for name, mode in ck.items():
    want = 0o755 if (tmp_path / name).is_dir() else 0o644
    assert mode == oct(want), name
  umask(0o027)
  checkpoint.write_json(tmp_path / "b.json", {"x": 1})
  checkpoint.save(tmp_path / "ck2", _tree())
  assert _modes(tmp_path)["b.json"] == oct(0o640)
  for p in (tmp_path / "ck2").rglob("*"):
    assert p.stat().st_mode & 0o777 == (0o750 if p.is_dir() else 0o640), p


def test_write_json_on_a_full_disk(tmp_path, monkeypatch):
  path = tmp_path / "summary.json"
  checkpoint.write_json(path, {"round": 1})
  def full(*a):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, "replace", full)
  with pytest.raises(lottery.LotteryError,
                     match=f"^workdir: no space left on device while writing "
                           f"{re.escape(repr(str(path)))}; free space and "
                           f"rerun the same command to resume$"):
    checkpoint.write_json(path, {"round": 2})
  monkeypatch.undo()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
  assert checkpoint.read_json(path) == {"round": 1}


def test_a_file_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
  # An immutable or read-only file or folder inside a workdir (the check at
  # claim covers the workdir itself): named, the temporary file aside.
  path = tmp_path / "summary.json"
  checkpoint.write_json(path, {"round": 1})
  def denied(src, dst):
    raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), src, None,
                          dst)
  monkeypatch.setattr(os, "replace", denied)
  with pytest.raises(lottery.LotteryError,
                     match=f"^workdir: cannot write "
                           f"{re.escape(repr(str(path)))} \\(Operation not "
                           f"permitted\\); make it writable and rerun the "
                           f"same command to resume$"):
    checkpoint.write_json(path, {"round": 2})
  monkeypatch.undo()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
  assert checkpoint.read_json(path) == {"round": 1}
  def read_only(*a, **k):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "r"))
  monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
  with pytest.raises(lottery.LotteryError, match=r"^workdir: cannot write "
                     r"'.*/r' \(Read-only file system\)"):
    checkpoint.write_json(tmp_path / "r" / "x.json", {})


def test_tensorstore_full_disk_is_recognised(tmp_path):
  # The error tensorstore gives for ENOSPC, as orbax passes it on.
  msg = ("RESOURCE_EXHAUSTED: Error writing \"w/0.0\" in OCDBT database: "
         "Failed to write 94836 bytes to file 14: No space left on device "
         "[os_error_code='28']")
  with pytest.raises(lottery.LotteryError, match="^workdir: no space left"):
    with checkpoint.disk_errors(tmp_path):
      raise ValueError(msg)
  with pytest.raises(ValueError, match="^other$"):
    with checkpoint.disk_errors(tmp_path):
      raise ValueError("other")


def test_full_disk_in_orbax_logs_no_traceback(tmp_path, monkeypatch, caplog):
  def save(self, path, tree, *a, **k):
    # What orbax does on ENOSPC: logs the error (with a traceback) from its
    # writer thread through absl, then raises it.
    logging.getLogger("absl").handle(logging.makeLogRecord(dict(
        name="absl", levelno=logging.ERROR, levelname="ERROR",
        pathname="/site-packages/orbax/checkpoint/_src/futures/future.py",
        msg="_SignalingThread.run() raised an exception")))
    raise ValueError("Failed to write: No space left on device")
  monkeypatch.setattr(ocp.Checkpointer, "save", save)
  jax.devices()  # JAX's backends start (and log at INFO) before the block.
  with caplog.at_level(logging.INFO):
    with pytest.raises(lottery.LotteryError, match="^workdir: no space left"):
      checkpoint.save(tmp_path / "ck", {"x": np.zeros(2)})
  assert caplog.records == []
  assert list(tmp_path.iterdir()) == []


# --- One writer per workdir --------------------------------------------------

def _config(**pruning):
  c = lottery.base_config()
  c.pruning.update(pruning)
  return c


def _in_use(wd, pid):
  return f"^workdir: {re.escape(repr(str(wd)))} is in use by another run " \
         f"\\(pid {pid}\\)$"


def test_second_claim_in_process_is_refused(tmp_path):
  wd = tmp_path / "wd"
  held = workdir.claim(wd, _config())
  assert (wd / workdir.LOCK_FILE).read_text() == f"{os.getpid()}\n"
  assert os.fspath(held) == str(wd) and held.path == wd
  for other in (_config(), _config(fraction=0.3)):
    with pytest.raises(lottery.LotteryError, match=_in_use(wd, os.getpid())):
      workdir.check(wd, other)
    with pytest.raises(lottery.LotteryError, match=_in_use(wd, os.getpid())):
      workdir.claim(wd, other)
  held.release()
  held.release()  # Idempotent.
  assert (wd / workdir.LOCK_FILE).read_text() == ""
  with workdir.claim(wd, _config()) as again:
    assert again.path == wd
  assert workdir.check(wd, _config())


_HOLDER = """
import sys, time
import lottery
from lottery import workdir
held = workdir.claim(sys.argv[1], lottery.base_config())
print("claimed", flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_second_process_is_refused_until_the_first_dies(tmp_path, npz_path):
  wd = tmp_path / "wd"
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(wd)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline() == "claimed\n"
    with pytest.raises(lottery.LotteryError, match=_in_use(wd, holder.pid)):
      workdir.claim(wd, _config(fraction=0.3))
    # The command line, with another config: one line, exit 1, at once.
    cli = subprocess.run(
        [sys.executable, "-m", "experiments.imp", f"--workdir={wd}",
         "--config.data.name=npz", f"--config.data.path={npz_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1
    assert cli.stderr.splitlines() == [
        f"error: workdir: {str(wd)!r} is in use by another run "
        f"(pid {holder.pid})"]
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # Its lock file (with its pid) stays; the kernel dropped its lock.
  assert (wd / workdir.LOCK_FILE).read_text() == f"{holder.pid}\n"
  with workdir.claim(wd, lottery.base_config()) as held:
    assert (wd / workdir.LOCK_FILE).read_text() == f"{os.getpid()}\n"
  assert held.path == wd


def test_check_writes_nothing(tmp_path):
  wd = tmp_path / "new" / "wd"
  assert not workdir.check(wd, _config())
  assert list(tmp_path.iterdir()) == []
  workdir.claim(wd, _config()).release()
  # Another config: refused once the run has saved a result (before, it
  # would replace the run); either way check writes nothing.
  assert not workdir.check(wd, _config(fraction=0.3))
  checkpoint.write_json(wd / "summary.json", {"finished": False})
  before = {p: p.read_bytes() for p in wd.rglob("*")}
  assert workdir.check(wd, _config())
  with pytest.raises(lottery.LotteryError, match="^config: "):
    workdir.check(wd, _config(fraction=0.3))
  assert {p: p.read_bytes() for p in wd.rglob("*")} == before


def test_extra_facts_are_recorded_and_compared(tmp_path):
  wd = tmp_path / "wd"
  workdir.claim(wd, _config()).release()  # A run from before facts.
  checkpoint.write_json(wd / "summary.json", {"finished": False})
  fp = {"data_fingerprint": "sha256:aa"}
  assert workdir.check(wd, _config(), extra=fp)
  workdir.claim(wd, _config(), extra=fp).release()
  assert checkpoint.read_json(wd / workdir.FACTS_FILE) == fp
  workdir.claim(wd, _config(), extra=fp).release()
  with pytest.raises(
      lottery.LotteryError,
      match=f"^config: workdir {re.escape(repr(str(wd)))} holds a run on "
            f"different data \\(data_fingerprint: 'sha256:aa' -> "
            f"'sha256:bb'\\); use a new --workdir$"):
    workdir.claim(wd, _config(), extra={"data_fingerprint": "sha256:bb"})
  assert checkpoint.read_json(wd / workdir.FACTS_FILE) == fp


# --- Path checks, before anything is written ---------------------------------

def test_unusable_workdir_paths(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  os.symlink(tmp_path / "gone", tmp_path / "dangling")
  (tmp_path / "ro").mkdir()
  cases = {tmp_path / "file": "is a file",
           tmp_path / "file" / "wd": f"cannot be created: "
                                     f"{re.escape(repr(str(tmp_path / 'file')))}"
                                     f" is a file",
           tmp_path / "dangling": "is a dangling symlink",
           tmp_path / "dangling" / "wd": "cannot be created: .* is a dangling",
           tmp_path / "ro" / "a" / "wd": "cannot be created: "
                                         f"{re.escape(repr(str(tmp_path / 'ro')))}"
                                         " is not writable"}
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: (
      pathlib.Path(p) != tmp_path / "ro" and real_access(p, mode)))
  before = sorted(tmp_path.rglob("*"))
  for wd, what in cases.items():
    q = re.escape(repr(str(wd)))
    for fn in (workdir.check, workdir.claim):
      with pytest.raises(lottery.LotteryError, match=f"^workdir: {q} {what}"):
        fn(wd, _config())
  with pytest.raises(lottery.LotteryError, match="^workdir: .* is a file$"):
    lottery.run(_config(), tmp_path / "file", log=quiet)
  assert sorted(tmp_path.rglob("*")) == before


# --- Crashes and full disks while writing ------------------------------------

class _Killed(BaseException):
  """Stands for SIGKILL: nothing of the writer's own cleanup runs."""


def _faulty(monkeypatch, target: str, fault: str):
  """Makes the first write whose path ends with `target` fail: orbax's save,
  or the rename (os.replace) that ends an atomic file write.

  fault: 'kill' leaves the writer's temporary file (or orbax's temporary
  directory) half-written and stops the run as SIGKILL would; 'enospc'
  fails the write with a full disk.
  """
  real_replace, real_save = os.replace, ocp.Checkpointer.save
  fired = []
  def fire(path, leftover):
    if fired or not str(path).endswith(target):
      return
    fired.append(path)
    leftover()
    if fault == "kill":
      raise _Killed()
    if isinstance(path, pathlib.Path):  # As Python reports it.
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    raise ValueError(  # As tensorstore (under orbax) reports it.
        f"RESOURCE_EXHAUSTED: Error writing in OCDBT database at local file "
        f"{path}: No space left on device [os_error_code='28']")
  def replace(src, path, *a, **k):  # Ends a JSON file's or CHECKSUMS' write.
    def leftover():
      data = pathlib.Path(src).read_bytes()
      (path.parent / f"{path.name}.lottery-x1y2z3w4.tmp").write_bytes(
          data[:len(data) // 2])
    fire(path, leftover)
    real_replace(src, path, *a, **k)
  def save(self, path, tree, *a, **k):
    def leftover():
      tmp = pathlib.Path(path + checkpoint.ORBAX_TMP) / "ocdbt.process_0"
      tmp.mkdir(parents=True)
      (tmp / "manifest.ocdbt").write_bytes(b"\0" * 10)
    fire(path, leftover)
    real_save(self, path, tree, *a, **k)
  monkeypatch.setattr(os, "replace", replace)
  monkeypatch.setattr(ocp.Checkpointer, "save", save)
  return fired


@pytest.mark.slow
def test_killed_or_full_disk_at_any_write_then_rerun_resumes(
    tiny_config, tmp_path, monkeypatch):
  cfg = tiny_config(**{"pruning.rounds": 1, "pruning.rewind_step": 3,
                       "controls": ()})
  lottery.run(cfg, tmp_path / "ref", log=quiet)
  wd = tmp_path / "run"
  # One of each kind of write (orbax's save, CHECKSUMS, JSON), each in the
  # first job: a resumed run repeats the jobs before the one it stopped in.
  faults = [("config.json", "kill"),
            ("rounds_round_000_ticket_step00000010", "kill"),
            ("rounds_round_000_ticket_step00000010/CHECKSUMS", "enospc"),
            ("rewind_point", "enospc"), ("rewind_point/CHECKSUMS", "kill"),
            ("round_000/ticket/metrics.json", "enospc"),
            ("summary.json", "kill")]
  for target, fault in faults:
    with monkeypatch.context() as m:
      fired = _faulty(m, target, fault)
      if fault == "kill":
        with pytest.raises(_Killed):
          lottery.run(cfg, wd, log=quiet)
      else:
        q = re.escape(str(wd))  # A checkpoint is named by its directory.
        what = re.escape(target.removesuffix("/" + checkpoint.CHECKSUMS))
        with pytest.raises(lottery.LotteryError,
                           match=f"^workdir: no space left on device while "
                                 f"writing '{q}/(.*/)?{what}'; free "
                                 f"space and rerun the same command to "
                                 f"resume$"):
          lottery.run(cfg, wd, log=quiet)
    assert fired, (target, fault)
    # Never refuses to resume (the workdir holds the fields IMP reads).
    workdir.check(wd, lottery.driver.resolve(cfg)[1])
  lottery.run(cfg, wd, log=quiet)
  leftovers = [p for p in wd.rglob("*") if p.name.endswith(".tmp")
               or checkpoint.ORBAX_TMP in p.name]
  assert leftovers == []
  for kind_round in (0, 1):
    a = lottery.load_ticket(tmp_path / "ref", kind_round)
    b = lottery.load_ticket(wd, kind_round)
    assert _bits(a.trained_params) == _bits(b.trained_params)
    assert _bits(a.rewind_params) == _bits(b.rewind_params)
  assert lottery.summary(wd)["finished"]


def test_full_disk_while_claiming(tmp_path, monkeypatch):
  wd = tmp_path / "wd"
  with monkeypatch.context() as m:
    _faulty(m, "config.json", "enospc")
    with pytest.raises(lottery.LotteryError,
                       match=f"^workdir: no space left on device while "
                             f"writing {re.escape(repr(str(wd / 'config.json')))}"
                             f"; free space and rerun the same command to "
                             f"resume$"):
      workdir.claim(wd, _config())
  assert not workdir.check(wd, _config())  # Lock, half a .tmp: no run yet.
  workdir.claim(wd, _config()).release()
  assert workdir.check(wd, _config())
  assert sorted(p.name for p in wd.iterdir()) == ["config.json", "lock"]


def test_leftovers_do_not_make_a_workdir_foreign(tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / workdir.LOCK_FILE).write_text("12345\n")  # A killed first claim ...
  (wd / "config.json.lottery-abc12345.tmp").write_text('{"da')  # ... mid-write.
  assert not workdir.check(wd, _config())
  workdir.claim(wd, _config()).release()
  assert sorted(p.name for p in wd.iterdir()) == ["config.json", "lock"]
  # Leftovers deep inside a run are deleted when it is claimed.
  deep = wd / "rounds" / "round_001" / "ticket"
  (deep / ("arrays" + checkpoint.ORBAX_TMP + "-17") / "d").mkdir(parents=True)
  (deep / "metrics.json.lottery-q1234567.tmp").write_text("{")
  (wd / "progress").mkdir()
  (wd / "progress" / "progress.json.lottery-z1234567.tmp").write_text("")
  workdir.claim(wd, _config()).release()
  assert sorted(p.relative_to(wd).as_posix() for p in wd.rglob("*")) == [
      "config.json", "lock", "progress", "rounds", "rounds/round_001",
      "rounds/round_001/ticket"]
  # A foreign directory with a .tmp file stays foreign, and untouched (a
  # leftover is named as write_json's temporary files are).
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  (other / "draft.tmp").write_text("mine")
  with pytest.raises(lottery.LotteryError, match="not empty and holds no"):
    workdir.claim(other, _config())
  assert sorted(p.name for p in other.iterdir()) == ["draft.tmp", "notes.txt"]


# --- Extending a run ----------------------------------------------------------

def test_more_rounds_extend_a_run_fewer_are_refused(tiny_config, tmp_path):
  cfg = lambda r: tiny_config(**{"pruning.rounds": r, "controls": ()})
  lottery.run(cfg(2), tmp_path / "ref", log=quiet)
  wd = tmp_path / "run"
  lottery.run(cfg(1), wd, log=quiet)
  round1 = ((wd / tickets.imp_path(1)) / "metrics.json").read_bytes()
  res = lottery.run(cfg(2), wd, log=quiet)
  assert [r["round"] for r in res["rounds"]] == [0, 1, 2]
  # config.json holds the fields the method reads (lottery.driver.resolve).
  assert checkpoint.read_json(wd / "config.json") == workdir.config_json(
      lottery.driver.resolve(cfg(2))[1])
  assert ((wd / tickets.imp_path(1)) / "metrics.json").read_bytes() == round1
  a, b = (lottery.load_ticket(d, 2) for d in (tmp_path / "ref", wd))
  assert _bits(a.trained_params) == _bits(b.trained_params)
  with pytest.raises(lottery.LotteryError,
                     match=f"^pruning.rounds: lower than the 2 rounds of the "
                           f"run in workdir {re.escape(repr(str(wd)))} "
                           f"\\(got 1\\)"):
    lottery.run(cfg(1), wd, log=quiet)
  # Rounds and another field: a different config, as always.
  other = tiny_config(**{"pruning.rounds": 3, "controls": (),
                         "pruning.fraction": 0.3})
  with pytest.raises(lottery.LotteryError, match=r"^config: .*pruning.fraction:"
                     r" 0.5 -> 0.3; pruning.rounds: 2 -> 3\)"):
    workdir.check(wd, lottery.driver.resolve(other)[1])


def test_a_relative_workdir_runs_resumes_and_loads(tiny_config, tmp_path,
                                                   monkeypatch):
  # Orbax takes absolute paths only: a relative workdir is made absolute for
  # it, and messages keep the user's spelling.
  cfg = tiny_config(**{"pruning.rounds": 1, "controls": ()})
  lottery.run(cfg, tmp_path / "ref", log=quiet)
  monkeypatch.chdir(tmp_path)
  first = lottery.run(cfg, "run", log=quiet)
  assert lottery.run(cfg, "run", log=quiet) == first  # Resumed: all loaded.
  a, b = (lottery.load_ticket(d, 1) for d in (tmp_path / "ref", "run"))
  assert _bits(a.trained_params) == _bits(b.trained_params)
  checkpoint.save("arrays", {"w": np.arange(3.0)})
  np.testing.assert_array_equal(checkpoint.restore("arrays")["w"],
                                np.arange(3.0))


# --- Writes on the writer thread ----------------------------------------------

def test_background_writes_keep_their_order_and_reads_wait(tmp_path,
                                                           monkeypatch):
  tree = {"w": np.arange(6.0).reshape(2, 3), "m": np.ones(3, bool)}
  with checkpoint.background_writes():
    checkpoint.write_json(tmp_path / "a.json", {"n": [1]})
    checkpoint.save(tmp_path / "ck", tree)
    checkpoint.remove(tmp_path / "ck")
    checkpoint.save(tmp_path / "ck", {**tree, "w": tree["w"] * 2})
    obj = {"n": [1]}
    checkpoint.write_json(tmp_path / "b.json", obj)
    obj["n"].append(2)  # What was written is what was asked, at the call.
    assert checkpoint.read_json(tmp_path / "a.json") == {"n": [1]}
    got = checkpoint.restore(tmp_path / "ck")
    assert np.array_equal(got["w"], tree["w"] * 2)
    assert checkpoint.read_json(tmp_path / "b.json") == {"n": [1]}
  # After the block, writes are synchronous again: in the caller's thread.
  writers = []
  real = os.replace
  def replace(*a, **k):
    writers.append(threading.current_thread())
    real(*a, **k)
  monkeypatch.setattr(os, "replace", replace)
  checkpoint.write_json(tmp_path / "c.json", {})
  assert writers == [threading.current_thread()]


def test_a_queued_removal_is_known_without_waiting(tmp_path, monkeypatch):
  checkpoint.write_json(tmp_path / "d" / "x.json", {})
  go = threading.Event()
  real = os.replace
  def slow(src, dst, *a, **k):  # The rename that ends a JSON write.
    if pathlib.Path(dst).name == "y.json":
      assert go.wait(timeout=30)
    real(src, dst, *a, **k)
  with checkpoint.background_writes():
    monkeypatch.setattr(os, "replace", slow)
    checkpoint.write_json(tmp_path / "d" / "y.json", {})  # Blocks the thread.
    checkpoint.remove(tmp_path / "d")
    # The writer is still held up: the answer comes from the queue.
    assert not checkpoint.exists(tmp_path / "d" / "x.json")
    assert (tmp_path / "d" / "x.json").exists()
    go.set()
  assert not (tmp_path / "d").exists()


def test_a_failed_background_write_stops_later_ones(tmp_path, monkeypatch):
  real = os.replace
  def full(src, dst, *a, **k):  # The rename that ends a.json's write.
    if pathlib.Path(dst).name == "a.json":
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    real(src, dst, *a, **k)
  monkeypatch.setattr(os, "replace", full)
  msg = "^workdir: no space left on device while writing .*a.json"
  with pytest.raises(lottery.LotteryError, match=msg):
    with checkpoint.background_writes():
      checkpoint.write_json(tmp_path / "a.json", {})
      checkpoint.wait_for(tmp_path / "a.json")
  monkeypatch.undo()
  with pytest.raises(lottery.LotteryError, match=msg):
    with checkpoint.background_writes():
      monkeypatch.setattr(os, "replace", full)
      checkpoint.write_json(tmp_path / "a.json", {})
      checkpoint.wait_for(tmp_path)
  monkeypatch.undo()
  with pytest.raises(lottery.LotteryError, match=msg):  # At the block's end.
    with checkpoint.background_writes():
      monkeypatch.setattr(os, "replace", full)
      checkpoint.write_json(tmp_path / "a.json", {})
      checkpoint.save(tmp_path / "ck", {"w": np.zeros(2)})
  assert not (tmp_path / "ck").exists()  # Queued after the failure: skipped.


def test_ticket_is_written_while_the_next_job_trains(tiny_config, tmp_path,
                                                     monkeypatch):
  trained = []
  second = threading.Event()
  real_train = loop.train
  def train(*a, **k):
    trained.append(1)
    if len(trained) == 2:
      second.set()
    return real_train(*a, **k)
  real_replace = os.replace
  overlapped = []
  def replace(src, dst, *a, **k):
    dst = pathlib.Path(dst)
    # The last file of round 0's ticket arrays: synchronous writes would
    # never see round 1 start (a timeout).
    if (dst.name == checkpoint.CHECKSUMS and dst.parent.name == "arrays"
        and "round_000" in str(dst)):
      overlapped.append(second.wait(timeout=60))
    real_replace(src, dst, *a, **k)
  monkeypatch.setattr(loop, "train", train)
  monkeypatch.setattr(os, "replace", replace)
  cfg = tiny_config(**{"pruning.rounds": 1, "controls": ()})
  lottery.run(cfg, tmp_path / "wd", log=quiet)
  assert overlapped == [True]
  monkeypatch.undo()
  # The same tickets as with synchronous writes.
  monkeypatch.setattr(checkpoint, "background_writes", contextlib.nullcontext)
  lottery.run(cfg, tmp_path / "ref", log=quiet)
  for r in (0, 1):
    a = lottery.load_ticket(tmp_path / "ref", r)
    b = lottery.load_ticket(tmp_path / "wd", r)
    assert _bits(a.trained_params) == _bits(b.trained_params)
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]


def test_leftover_names_are_the_writers_own(tmp_path):
  # write_json's temporary files (tempfile.mkstemp), remove's renamed
  # directories and orbax's temporary checkpoints; not a user's files.
  for leftover in ("config.json.lottery-abcd_123.tmp",
                   "progress.lottery-removing-4242-1765000000000000000.tmp",
                   "arrays" + checkpoint.ORBAX_TMP + "-17"):
    assert checkpoint.is_leftover(leftover), leftover
  for mine in ("notes.tmp", "data.tmp", "config.json", "arrays",
               "report.final.tmp", "report.12345678.tmp", "x.1.2.removing.tmp",
               "backup.20240101.tmp"):
    assert not checkpoint.is_leftover(mine), mine
