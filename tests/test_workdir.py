"""The workdir: damaged or foreign files where a run's config.json, facts.json
and lock file belong, and a workdir that cannot be created, refused in one
line."""

import os
import pathlib

import pytest

import lottery
from lottery import checkpoint
from lottery import workdir as workdir_lib
from lottery.errors import LotteryError


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


def _saved(wd):
  """Marks the run claimed in `wd` as one that saved a result (a run that
  saved nothing gives way to another config)."""
  checkpoint.write_json(wd / "summary.json", {"finished": False})
  return wd


def test_facts_json_that_is_not_an_object(tmp_path):
  wd = tmp_path / "wd"
  workdir_lib.claim(wd, lottery.base_config(), extra={"a": 1}).release()
  _saved(wd)
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
        f"workdir: the lock file '{wd}/lock' is a symlink (to "
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
  if os.path.isdir("/proc") and not os.path.exists(wd):
    if not os.access("/proc", os.W_OK | os.X_OK):
      # Not root: refused before anything is tried.
      want = ("workdir: '/proc/lottery_run' cannot be created: '/proc' is "
              "not writable")
    else:
      # Root, whom os.access lets write anywhere: a probe asks the kernel.
      want = ("workdir: '/proc/lottery_run' cannot be created in '/proc' (No "
              "such file or directory); use a --workdir in a writable "
              "directory")
    for fn in (workdir_lib.check, workdir_lib.claim):  # --dry_run, a run.
      with pytest.raises(LotteryError) as e:
        fn(wd, c)
      assert str(e.value) == want
  # Where the probe passes and mkdir still fails (a parent that vanished).
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


def test_a_workdir_inside_another_run_is_refused(tmp_path):
  """A new run in a folder of another run's workdir would put its tickets
  among that run's records: refused before anything is written, at any
  depth. A folder that merely holds a config.json of its own is no run."""
  c = lottery.base_config()
  run = tmp_path / "run"
  workdir_lib.claim(run, c).release()
  (tmp_path / "link").symlink_to(run / "rounds", target_is_directory=True)
  for wd in (run / "rounds" / "round_004", run / "nested",
             tmp_path / "link" / "a"):
    for fn in (workdir_lib.check, workdir_lib.claim):
      with pytest.raises(LotteryError) as e:
        fn(wd, c)
      assert str(e.value) == (
          f"workdir: '{wd}' is inside the run in '{run}', whose records it "
          f"would mix with its own; use a --workdir outside it")
      assert not wd.exists()
  assert workdir_lib.check(run, c)  # The run itself resumes.
  # A path through the run and out of it ('..') is not inside it.
  assert not workdir_lib.check(run / ".." / "other", c)
  # A link loop: one line, not a traceback.
  (tmp_path / "loop").symlink_to(tmp_path / "loop")
  with pytest.raises(LotteryError, match=r"^workdir: '.*loop' is a dangling "
                     r"symlink"):
    workdir_lib.check(tmp_path / "loop", c)
  # A run made inside another before the refusal still resumes.
  nested = run / "old"
  nested.mkdir()
  (nested / "config.json").write_bytes((run / "config.json").read_bytes())
  (nested / "lock").touch()
  assert workdir_lib.check(nested, c)
  (tmp_path / "project").mkdir()
  (tmp_path / "project" / "config.json").write_text("{}")
  assert not workdir_lib.check(tmp_path / "project" / "runs" / "a", c)


def test_a_model_option_at_its_default_is_the_same_run(tmp_path):
  """model.width=25 for the MNIST-1D CNN (its default) is the run written
  with 0 ('the model's default'), and the reverse; another width, or 25
  for a model whose default differs, is another run."""
  def config(name, width):
    c = lottery.base_config()
    c.model.update(name=name, width=width)
    return c
  wd = tmp_path / "wd"
  workdir_lib.claim(wd, config("mnist1d_cnn", 0)).release()
  _saved(wd)
  assert workdir_lib.check(wd, config("mnist1d_cnn", 25))
  with pytest.raises(LotteryError, match=r"model.width: 0 -> 24\)"):
    workdir_lib.check(wd, config("mnist1d_cnn", 24))
  at_25 = tmp_path / "at_25"  # The refusal names the saved value.
  workdir_lib.claim(at_25, config("mnist1d_cnn", 25)).release()
  _saved(at_25)
  assert workdir_lib.check(at_25, config("mnist1d_cnn", 0))
  with pytest.raises(LotteryError, match=r"model.width: 25 -> 24\)"):
    workdir_lib.check(at_25, config("mnist1d_cnn", 24))
  other = tmp_path / "other"
  workdir_lib.claim(other, config("resnet20", 25)).release()
  _saved(other)
  assert workdir_lib.check(other, config("resnet20", 25))
  with pytest.raises(LotteryError, match=r"model.width: 25 -> 0\)"):
    workdir_lib.check(other, config("resnet20", 0))  # ResNet-20's is 16.
  assert workdir_lib.options_unset({"model.name": "resnet20",
                                    "model.width": 16, "model.bn_init": "ones"}
                                   ) == {"model.name": "resnet20",
                                         "model.width": 0, "model.bn_init": ""}

  assert workdir_lib.options_unset({"model.name": ["damaged"],
                                    "model.width": 3}) == {
                                        "model.name": ["damaged"],
                                        "model.width": 3}
