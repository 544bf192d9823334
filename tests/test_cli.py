"""The command line: help, typos, bad values and overrides in one line, dry
run, recipes from anywhere, what a run walks into (a workdir that cannot be
created, a missing dataset, a full disk), signals; the progress reporter;
reading a run's config back."""

import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

import lottery
from experiments import cli
from lottery import config as config_lib
from lottery import data as data_lib
from lottery import models
from lottery import runs
from lottery import scores
from lottery import workdir as workdir_lib
from lottery.progress import NullProgress
from lottery.progress import Progress
from lottery.progress import format_duration

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _cli(*args, cwd=ROOT, module="experiments.imp", timeout=120, env=None):
  return subprocess.run([sys.executable, "-m", module, *args],
                        cwd=cwd, env={**ENV, **(env or {})},
                        capture_output=True, text=True, timeout=timeout)


def _one_error_line(res):
  assert res.returncode == 1, res.stderr
  assert "Traceback" not in res.stderr
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1, res.stderr
  return lines[0]


# --- help -------------------------------------------------------------------


def test_help_lists_fields_defaults_choices_and_recipes():
  res = _cli("--help")
  assert res.returncode == 0, res.stderr
  out = res.stdout
  assert "--workdir" in out and "--dry_run" in out and "--log_steps" in out
  # Defaults are the default recipe's; allowed values come from registries.
  assert re.search(r"^  training\.steps +1500$", out, re.M)
  assert re.search(r"^  pruning\.fraction +0\.1$", out, re.M)
  lines = {l.split()[0]: l for l in out.splitlines()
           if re.match(r"^  \S", l)}
  for field, names in [("data.name", data_lib.NAMES),
                       ("model.name", models.names()),
                       ("pruning.score", scores.names()),
                       ("pruning.reset", lottery.imp.RESETS.names())]:
    assert f"one of: {', '.join(names)})" in lines[field], lines[field]
  assert "any of: random_prune, reinit" in lines["controls"]
  for recipe in ("mnist1d:quick", "lenet_mnist:local", "conv_cifar10:conv4"):
    assert recipe in out
  # experiments.imp lists IMP's recipes; experiments.run every method's.
  assert "pai_mnist1d" not in out and "other methods' recipes" in out
  assert "pai_mnist1d:quick" in _cli("--help", module="experiments.run").stdout
  full = _cli("--helpfull", "--config=mnist1d:quick")
  assert full.returncode == 0
  assert re.search(r"^  training\.steps +200$", full.stdout, re.M)
  assert "--flagfile" in full.stdout  # absl's own flags too.


# --- typos and bad values ----------------------------------------------------


@pytest.mark.parametrize("arg,message", [
    ("--config.trainig.steps=3",
     "error: config: no field 'trainig.steps' (did you mean "
     "'training.steps'?)"),
    ("--config.training.stepz=3",
     "error: config: no field 'training.stepz' (did you mean "
     "'training.steps'?)"),
    ("--config.training.steps=abc",
     "error: training.steps: must be an integer (got 'abc')"),
    ("--config.training.nesterov=maybe",
     "error: training.nesterov: must be true or false (got 'maybe')"),
    ("--config=mnist1dd",
     "error: config: no recipe or file 'mnist1dd' (did you mean 'mnist1d'? "
     f"recipes: {', '.join(sorted(cli.recipes()))}) (got 'mnist1dd')"),
    ("--config.controls_every=0",
     "error: controls_every: must be an integer >= 1 (got 0); to run no "
     "controls, set controls=()"),
    ("--config=mnist1d:fast",
     "error: config: 'mnist1d' takes one of mnist1d, mnist1d:quick, "
     "mnist1d:paper, mnist1d:cnn, mnist1d:cnn,quick (got 'mnist1d:fast')"),
])
def test_bad_command_line_prints_one_line(tmp_path, arg, message):
  res = _cli(f"--workdir={tmp_path / 'wd'}", arg)
  assert _one_error_line(res) == message
  assert not (tmp_path / "wd").exists()


def test_missing_workdir_prints_one_line():
  assert _one_error_line(_cli("--config=mnist1d:quick")) == (
      "error: workdir: required, e.g. --workdir=/tmp/lottery_runs/run (got "
      "nothing)")


def test_check_overrides_accepts_subtrees_and_leaves():
  c = lottery.base_config()
  cli.check_overrides(c, ["training.steps", "seeds", "controls"])
  with pytest.raises(lottery.LotteryError,
                     match=r"^config: no field 'zzz' \(--help lists"):
    cli.check_overrides(c, ["zzz"])


@pytest.mark.parametrize("flag,start", [
    ("--config.training.learning_rate=inf", "error: training.learning_rate"),
    ("--config.training.weight_decay=1e300", "error: training.weight_decay"),
    ("--config.seeds.init=-3", "error: seeds.init"),
])
def test_cli_refuses_in_one_line(tmp_path, flag, start):
  res = _cli("--config=configs/mnist1d.py:quick",
             f"--workdir={tmp_path / 'wd'}", flag)
  assert res.returncode == 1, res.stderr
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(start), res.stderr
  assert "Traceback" not in res.stderr
  assert not (tmp_path / "wd").exists()


def test_cli_refuses_a_repeated_override(tmp_path):
  assert _one_error_line(_cli(
      "--config=pai_mnist1d:quick", f"--workdir={tmp_path / 'wd'}",
      "--dry_run", "--config.pai.methods=('snip',)",
      "--config.pai.methods=('random',)", module="experiments.pai")) == (
          "error: --config.pai.methods: given twice")
  assert _one_error_line(_cli(
      "--config=mnist1d:quick", "--config.seeds.num=2",
      f"--workdir={tmp_path / 'wd'}", "--config.seeds.num", "3")) == (
          "error: --config.seeds.num: given twice")
  assert not (tmp_path / "wd").exists()


def test_cli_names_the_fields_of_a_block(tmp_path):
  assert _one_error_line(_cli(
      "--config=mnist1d:quick", f"--workdir={tmp_path / 'wd'}", "--dry_run",
      "--config.seeds=3")) == (
          "error: seeds: is a block of fields (init, data, control, "
          "num); set one, e.g. --config.seeds.num=3")
  c = lottery.base_config()
  assert cli.flag_error_message(
      ValueError("flag --config.training=5: Could not override"), c) == (
          "training: is a block of fields (steps, batch_size, optimizer, "
          "learning_rate, momentum, nesterov, weight_decay, weight_decay_on, "
          "schedule, "
          "lr_boundaries, lr_decay, warmup_steps, label_smoothing, "
          "eval_every, checkpoint_every, loop, replicas); set one, e.g. "
          "--config.training.steps=5")
  # A leaf field keeps its message.
  assert cli.flag_error_message(
      ValueError("flag --config.training.steps=abc: bad"), c) == (
          "training.steps: must be an integer (got 'abc')")


# --- recipes and dry run -----------------------------------------------------


def test_resolve_config_names_paths_and_readme_spellings(tmp_path):
  recipe = str(ROOT / "configs" / "mnist1d.py")
  assert cli.resolve_config("mnist1d") == recipe
  assert cli.resolve_config("mnist1d:quick") == recipe + ":quick"
  assert cli.resolve_config("mnist1d.py:quick") == recipe + ":quick"
  assert cli.resolve_config("configs/mnist1d.py") == recipe
  own = tmp_path / "mine.py"
  own.write_text("from lottery.config import base_config as get_config\n")
  assert cli.resolve_config(f"{own}:x") == f"{own}:x"
  assert cli.load_config(str(own)).training.steps == 1500
  # A file without get_config, and one that sets a field to another type.
  own.write_text("x = 1\n")
  with pytest.raises(lottery.LotteryError, match=r"^config: .*mine.py "
                     r"defines no get_config\(\) returning the config"):
    cli.load_config(str(own))
  own.write_text("from lottery.config import base_config\n"
                 "def get_config():\n"
                 "  c = base_config()\n"
                 "  c.training.steps = '300'\n"
                 "  return c\n")
  with pytest.raises(lottery.LotteryError, match=r"get_config failed \(field "
                     r"'steps' takes a value of type int, got '300' of type "
                     r"str\)"):
    cli.load_config(str(own))


def test_a_config_file_imports_a_module_beside_it(tmp_path, monkeypatch):
  # A method plug-in kept in its own module next to the config file.
  monkeypatch.setattr(sys, "path", list(sys.path))
  (tmp_path / "lottery_test_beside.py").write_text("STEPS = 7\n")
  own = tmp_path / "mine.py"
  own.write_text("import lottery_test_beside\n"
                 "from lottery.config import base_config\n"
                 "def get_config():\n"
                 "  c = base_config()\n"
                 "  c.training.steps = lottery_test_beside.STEPS\n"
                 "  return c\n")
  assert cli.load_config(str(own)).training.steps == 7
  # Last on the path: it shadows no installed module; the recipes' folder
  # is never added (configs/mnist1d.py would shadow the mnist1d package).
  assert sys.path[-1] == str(tmp_path)
  cli.load_config("mnist1d:quick")
  assert str(ROOT / "configs") not in sys.path


def test_dry_run_from_another_directory_writes_nothing(tmp_path):
  wd = tmp_path / "wd"
  res = _cli(f"--workdir={wd}", "--dry_run", "--config.pruning.rounds=7",
             "--config=mnist1d:quick", cwd=tmp_path)  # Override comes first.
  assert res.returncode == 0, res.stderr
  *config_lines, last = res.stdout.strip().splitlines()
  expected = cli.load_config("mnist1d:quick")
  expected.pruning.rounds = 7
  assert json.loads("\n".join(config_lines)) == workdir_lib.config_json(
      lottery.driver.resolve(expected)[1])
  assert "pai" not in json.loads("\n".join(config_lines))
  assert last == f"workdir: {wd} (new run)"
  assert not wd.exists()
  # Without a workdir: the config alone.
  res = _cli("--dry_run", "--config=mnist1d:quick",
             "--config.pruning.rounds=7", cwd=tmp_path)
  assert res.returncode == 0, res.stderr
  assert json.loads(res.stdout) == json.loads("\n".join(config_lines))
  assert sorted(p.name for p in tmp_path.iterdir()) == []
  # The default recipe works from elsewhere too, and a bad value is
  # reported by the dry run (it validates).
  res = _cli(f"--workdir={wd}", "--dry_run", "--config.pruning.fraction=2.0",
             cwd=tmp_path)
  assert _one_error_line(res) == (
      "error: pruning.fraction: must be in (0, 1) (got 2.0)")


@pytest.mark.parametrize("args, error", [
    (("--config.data.name=npz", "--config.data.path=/nope.npz"),
     "error: data.path: no such file '/nope.npz'"),
    (("--config.model.width=64",), "error: model.width: not an option of "
     "model 'mnist1d_mlp', which takes no options (got 64)"),
    (("--config.data.augment=crop_flip",), "error: data.augment: "
     "'crop_flip' needs image batches (N, H, W, C) (got shape (1, 40))"),
])
def test_dry_run_checks_what_the_run_checks_before_writing(tmp_path, args,
                                                           error):
  # The data loaded and the model built, as the run does; nothing written.
  for extra in (("--dry_run",), ()):
    res = _cli(f"--workdir={tmp_path / 'wd'}", "--config=mnist1d:quick",
               *args, *extra, cwd=tmp_path)
    assert _one_error_line(res) == error
    assert not (tmp_path / "wd").exists()


def test_a_tilde_in_a_path_is_the_home_directory(tmp_path):
  # The shell leaves '--workdir=~/x' as it is; the launcher expands it.
  res = _cli("--workdir=~/wd", "--dry_run", "--config=mnist1d:quick",
             "--config.data.cache_dir=~/cache", cwd=tmp_path,
             env={"HOME": str(tmp_path)})
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip().splitlines()[-1] == (
      f"workdir: {tmp_path / 'wd'} (new run)")
  assert '"cache_dir": "' + str(tmp_path / "cache") + '"' in res.stdout
  assert not (tmp_path / "~").exists()


def test_dry_run_checks_the_devices(tmp_path):
  # With two devices the replicates are laid out on a mesh, where they cannot
  # be unrolled: the dry run refuses it as the run would, writing nothing.
  two = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  args = ("--config=mnist1d:quick", f"--workdir={tmp_path / 'wd'}",
          "--dry_run", "--config.seeds.num=2")
  assert _one_error_line(_cli(*args, "--config.training.replicas=unroll",
                              env=two)) == (
      "error: training.replicas: 'unroll' runs on one device; over several "
      "the replicates are vmapped (use 'vmap' or 'auto')")
  assert _cli(*args, "--config.training.replicas=unroll").returncode == 0
  assert _cli(*args, env=two).returncode == 0
  assert not (tmp_path / "wd").exists()


def test_out_of_memory_is_one_line(tmp_path):
  """The host's or the device's memory running out in a run is reported in
  one line, not a traceback, also when another error wraps it; any other
  error is left as it is (a model too large to train at all is refused
  before anything is written: test_a_model_too_large_is_refused)."""
  script = tmp_path / "oom.py"
  script.write_text(
      "import sys, jax\n"
      "from experiments import cli\n"
      "def run(config, workdir, progress):\n"
      "  kind = sys.argv[1]\n"
      "  if kind == 'device':\n"
      "    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of '\n"
      "                                     'memory allocating 9 bytes.\\nmore')\n"
      "  if kind == 'gpu':\n"
      "    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Failed to '\n"
      "                                     'allocate request for 2.99GiB')\n"
      "  if kind == 'bare':\n"
      "    raise MemoryError\n"
      "  if kind == 'suppressed':\n"
      "    try:\n"
      "      raise MemoryError('x')\n"
      "    except MemoryError:\n"
      "      raise ValueError('something else') from None\n"
      "  if kind == 'wrapped':\n"
      "    try:\n"
      "      raise MemoryError('Unable to allocate 27.9 GiB')\n"
      "    except MemoryError as e:\n"
      "      raise RuntimeError('in a callback') from e\n"
      "  raise ValueError('something else')\n"
      "cli.main(run, doc='', argv=['x', f'--workdir={sys.argv[2]}'])\n")
  for kind, said in (("device", "RESOURCE_EXHAUSTED: Out of memory "
                      "allocating 9 bytes."),
                     ("gpu", "RESOURCE_EXHAUSTED: Failed to allocate "
                      "request for 2.99GiB"),
                     ("bare", "MemoryError"),
                     ("wrapped", "Unable to allocate 27.9 GiB"),
                     ("other", None), ("suppressed", None)):
    res = subprocess.run([sys.executable, str(script), kind,
                          str(tmp_path / "wd")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    if said is None:
      assert res.returncode == 1
      assert res.stderr.strip().splitlines()[-1] == (
          "ValueError: something else")
      continue
    assert _one_error_line(res) == (
        f"error: out of memory at start-up: {said}; what was finished is "
        f"kept: rerun the same command where memory is free, or use a "
        f"smaller model, batch or dataset in a new --workdir")


def test_a_model_too_large_is_refused(tmp_path):
  # Its parameters alone exceed the machine's memory (and a fan-in past
  # int32's range is no overflow): refused before anything is written.
  res = _cli("--config=mnist1d:cnn,quick", "--config.model.width=1000000000",
             f"--workdir={tmp_path / 'wd'}")
  assert re.fullmatch(
      r"error: model: mnist1d_cnn has 6,000,000,058,000,000,010 parameters "
      r"\(.* GiB\); training needs at least twice that \(weights and "
      r"gradients\), more than the .* GiB of memory of this machine: choose "
      r"a smaller model", _one_error_line(res))
  assert not (tmp_path / "wd").exists()


def test_dry_run_names_a_finished_run(tmp_path):
  args = ("--config=mnist1d:quick", f"--workdir={tmp_path / 'wd'}",
          "--config.training.steps=10",
          "--config.training.eval_every=10", "--config.controls=()")
  assert _cli(*args, "--config.pruning.rounds=1", cwd=tmp_path).returncode == 0
  res = _cli(*args, "--config.pruning.rounds=1", "--dry_run", cwd=tmp_path)
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip().splitlines()[-1] == (
      f"workdir: {tmp_path / 'wd'} (holds this run, finished: a rerun trains "
      f"nothing)")
  res = _cli(*args, "--dry_run", "--config.pruning.rounds=3", cwd=tmp_path)
  assert res.stdout.strip().splitlines()[-1] == (
      f"workdir: {tmp_path / 'wd'} (extends the run there from 1 to 3 rounds)")


def test_directory_named_lottery_in_cwd_does_not_shadow(tmp_path):
  # From the parent of a checkout (or of a workdir) named lottery/, `import
  # lottery` finds that directory as a namespace package before an editable
  # install: the launcher looks again without the working directory.
  (tmp_path / "cwd" / "lottery").mkdir(parents=True)
  (tmp_path / "path").mkdir()
  (tmp_path / "path" / "experiments").symlink_to(ROOT / "experiments")
  res = subprocess.run(
      [sys.executable, "-m", "experiments.imp", "--workdir=wd", "--dry_run"],
      cwd=tmp_path / "cwd", capture_output=True, text=True, timeout=120,
      env={**ENV, "PYTHONPATH": str(tmp_path / "path")})
  if "lottery.errors" in res.stderr or "shadows" in res.stderr:
    # No installed lottery to fall back on: one line says so.
    assert _one_error_line(res) == (
        f"error: lottery: '{tmp_path / 'cwd' / 'lottery'}' shadows the "
        "installed package; run from another directory")
  else:
    assert res.returncode == 0, res.stderr
    assert "workdir: " in res.stdout and "Traceback" not in res.stderr
    assert not (tmp_path / "cwd" / "wd").exists()


# --- what a run walks into ---------------------------------------------------


def test_cli_workdir_that_cannot_be_created(npz_path):
  if not os.path.isdir("/proc") or os.path.exists("/proc/lottery_run"):
    pytest.skip("needs /proc")
  res = _cli("--config=mnist1d:quick", "--config.data.name=npz",
             f"--config.data.path={npz_path}", "--config.model.name=mlp_tiny",
             "--workdir=/proc/lottery_run")
  assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
  # After the lines that describe the data and model: one error line.
  errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert errors == [res.stderr.strip().splitlines()[-1]], res.stderr
  assert errors[0].startswith("error: workdir: '/proc/lottery_run' cannot be "
                              "created"), res.stderr


def _run(*args, cwd):
  return _cli(*args, cwd=cwd, module="experiments.run", timeout=300)


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


# --- signals -----------------------------------------------------------------


def _tiny_run(workdir, npz):
  return [sys.executable, "-m", "experiments.imp", f"--workdir={workdir}",
          "--config=mnist1d:quick", "--config.data.name=npz",
          f"--config.data.path={npz}", "--config.model.name=mlp_tiny",
          "--config.training.steps=600", "--config.training.batch_size=16",
          "--config.training.eval_every=10",
          "--config.training.checkpoint_every=50",
          "--config.pruning.rounds=1"]


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130),
                                         (signal.SIGTERM, 143)])
def test_signal_prints_position_then_rerun_finishes(npz_path, tmp_path,
                                                    signum, code):
  wd = tmp_path / "wd"
  proc = subprocess.Popen(_tiny_run(wd, npz_path), cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  err = []
  training = threading.Event()

  def read():
    for line in proc.stderr:
      err.append(line)
      # The first status line of a training run (not a TTY: plain lines).
      if re.match(r"round 0 ticket \d+/600 steps", line):
        training.set()
  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  assert training.wait(120), "".join(err)
  proc.send_signal(signum)
  proc.wait(60)
  reader.join(10)
  stderr = "".join(err)
  assert proc.returncode == code, stderr
  assert "Traceback" not in stderr
  last = stderr.strip().splitlines()[-1]
  assert re.fullmatch(r"interrupted at round \d ticket step \d+( \(a rerun "
                      r"resumes it from step \d+\))?; rerun the same command "
                      r"to resume", last), last
  assert not (wd / "summary.json").exists() or not lottery.summary(wd)[
      "finished"]
  res = subprocess.run(_tiny_run(wd, npz_path), cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert lottery.summary(wd)["finished"]
  assert res.stdout.splitlines()[-1].startswith("round  1/1  density ")


# --- progress ----------------------------------------------------------------


class _Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_format_duration():
  assert [format_duration(s) for s in (0, 59.4, 61, 3600 * 2 + 5)] == [
      "0:00", "0:59", "1:01", "2:00:05"]
  assert format_duration(float("nan")) == "?"


def test_progress_plain_lines_are_throttled():
  clock, err, out = _Clock(), io.StringIO(), io.StringIO()
  p = Progress(stream=err, out=out, clock=clock, interval=10.0)
  assert not p.live and p.where() == "start-up"
  p.jobs(total=4, done=1)
  p.info("data: blobs")
  p.job_start("round 1 ticket", 0, 100)
  clock.t += 5.0  # The first chunk: 10 steps, compilation included.
  p.job_step(10)
  for reached in (20, 30, 40, 50):  # 4 chunks of 10 steps, 1 s each.
    clock.t += 1.0
    p.job_step(reached)
  assert p.where() == ("round 1 ticket step 50 (a rerun resumes it from "
                       "step 0)")
  clock.t += 6.0  # 10 s after the first line: the second one.
  p.job_step(60)
  # First line: only the first chunk, which compiled: rate and ETAs unknown.
  # Second: 50 steps in the 10 s after the first chunk, 40 left: 8 s; the 2
  # jobs after this one at its 100 steps at 5 steps/s each: 8 + 40 s.
  assert err.getvalue().splitlines() == [
      "data: blobs",
      "round 1 ticket 10/100 steps  ? steps/s  elapsed 0:05  ETA ? | "
      "jobs 1/4  ETA ?",
      "round 1 ticket 60/100 steps  5.0 steps/s  elapsed 0:15  ETA 0:08 | "
      "jobs 1/4  ETA 0:48"]
  clock.t += 5.0
  p.job_end()  # Took 20 s; 17 s at its steady rate (first chunk 2 s, not 5).
  p.line("round  1/3  density 0.5")
  assert out.getvalue() == "round  1/3  density 0.5\n"
  p.job_start("round 1 reinit", 0, 100)
  clock.t += 10.0
  p.job_step(100)
  # Its own ETA 0, one job after it at the first job's steady 17 s.
  assert err.getvalue().splitlines()[-1].endswith("| jobs 2/4  ETA 0:17")
  assert "\r" not in err.getvalue()


def test_progress_live_redraws_in_place_and_keeps_lines():
  clock, err, out = _Clock(), _Tty(), io.StringIO()
  p = Progress(stream=err, out=out, clock=clock)
  assert p.live
  p.job_start("round 0 ticket", 0, 20)
  clock.t += 1.0
  p.job_step(10)
  first = "round 0 ticket 10/20 steps  ? steps/s  elapsed 0:01  ETA ?"
  assert err.getvalue() == "\r" + first
  clock.t += 0.05  # Sooner than the redraw interval: not drawn.
  p.job_step(12)
  assert err.getvalue() == "\r" + first
  p.info("compiled in 0.9 s")  # Clears the bar, prints, redraws it.
  bar = f"\r{' ' * len(first)}\r"
  assert err.getvalue().startswith("\r" + first + bar + "compiled in 0.9 s\n"
                                   "\rround 0 ticket 12/20 steps")
  clock.t += 0.15
  p.job_step(20)  # The last step is always drawn.
  assert "20/20 steps" in err.getvalue().rsplit("\r", 1)[-1]
  p.job_end()
  assert err.getvalue().endswith("\r")  # The bar is gone.
  p.line("round  0/2  density 1.0")
  assert out.getvalue() == "round  0/2  density 1.0\n"
  p.close()


def test_progress_rate_unknown_until_a_second_of_steps():
  clock, err = _Clock(), io.StringIO()
  p = Progress(stream=err, clock=clock)
  p.job_start("dense", 0, 100)
  clock.t += 0.01
  p.job_step(10)  # A rate over 10 ms is noise.
  assert err.getvalue() == (
      "dense 10/100 steps  ? steps/s  elapsed 0:00  ETA ?\n")


def test_null_progress_prints_nothing_but_tracks_position(capsys):
  p = Progress.null()
  assert isinstance(p, NullProgress)
  p.jobs(3)
  p.info("x")
  p.job_start("round 2 random_prune", 5, 50)
  p.job_step(25)
  p.line("round 2")
  assert p.where() == ("round 2 random_prune step 25 (a rerun resumes it "
                       "from step 5)")
  p.job_saved(20)
  assert p.where().endswith("(a rerun resumes it from step 20)")
  p.job_saved(25)  # Saved where it is.
  assert p.where() == "round 2 random_prune step 25"
  p.job_end()
  # After a group's training (a stability pair's path evaluation, say).
  p.group_trained("source dense k 0")
  assert p.where() == ("source dense k 0, after its training (its tickets "
                       "are saved)")
  p.job_start("source dense k 25 x4", 25, 50)
  assert p.where() == "source dense k 25 x4 step 25"
  assert capsys.readouterr() == ("", "")


# --- reading a run back --------------------------------------------------------


def test_load_config_round_trips(tiny_config, tmp_path):
  with pytest.raises(lottery.LotteryError,
                     match=r"^workdir: '.*' holds no run \(config.json "
                           r"missing\)$"):
    runs.load_config(tmp_path)
  cfg = tiny_config(**{"pruning.layer_fractions": "out/kernel=0.1"})
  workdir_lib.claim(tmp_path, cfg)
  loaded = runs.load_config(tmp_path)
  assert loaded.to_dict() == cfg.to_dict()  # Tuples stay tuples.
  assert workdir_lib.check(tmp_path, loaded)  # The same run.


def test_progress_eta_leaves_out_compilation():
  """A slow first chunk (it compiles) inflates neither the run's ETA nor the
  whole experiment's: 10 jobs of 100 steps at 10 steps/s, a 60 s compile."""
  clock = _Clock()
  p = Progress(stream=io.StringIO(), clock=clock, interval=float("inf"))
  p.jobs(total=10)
  p.job_start("round 0 ticket", 0, 100)
  clock.t += 61.0  # The first chunk: 10 steps and the compile.
  p.job_step(10)
  assert p.status().endswith("ETA ? | jobs 0/10  ETA ?")  # Not 9:09 / 1:41:00.
  clock.t += 1.0
  p.job_step(20)
  # 80 steps left at 10 steps/s: 8 s; 9 jobs of 100 steps after it: 90 s each.
  assert p.status(now=clock.t) == (
      "round 0 ticket 20/100 steps  10.0 steps/s  elapsed 1:02  ETA 0:08 | "
      "jobs 0/10  ETA 1:38")
  clock.t += 8.0
  p.job_step(100)
  p.job_end()  # 70 s, of which 60 compiling.
  p.job_start("round 1 ticket", 0, 100)
  clock.t += 1.0  # Compiled already: a fast first chunk.
  p.job_step(10)
  # The last job's steady rate until a second chunk; 8 jobs after it at the
  # first job's steady 10 s (not its 70 s).
  assert p.status(now=clock.t) == (
      "round 1 ticket 10/100 steps  10.0 steps/s  elapsed 0:01  ETA 0:09 | "
      "jobs 1/10  ETA 1:29")
  clock.t += 9.0
  p.job_step(100)
  p.job_end()  # 10 s: from now on the mean of the jobs after the first.
  p.job_start("round 2 ticket", 0, 100)
  clock.t += 1.0
  p.job_step(10)
  clock.t += 3.0
  p.job_step(40)
  assert p.status(now=clock.t).endswith("ETA 0:06 | jobs 2/10  ETA 1:16")
