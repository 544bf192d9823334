r"""The command line every launcher in experiments/ shares.

A launcher (experiments/run.py, and the one-method aliases imp.py, pai.py,
sparse.py) is a few lines:

  if __name__ == "__main__":
    cli.launch(__doc__, default_config="mnist1d", method="imp")

and gets:

  --config=NAME[:ARG]   a recipe of configs/ by name (mnist1d, mnist1d:quick),
                        from any working directory; or a file PATH[:ARG]
  --config.FIELD=VALUE  overrides, checked against the config's fields
  --workdir=DIR         where the run is written (and resumed from)
  --dry_run             prints the resolved config, checks everything the
                        run checks before it writes (loads the data, builds
                        the model) and, given --workdir, says whether it
                        starts or resumes a run; writes nothing there
  --help, --helpfull    flags, recipes, and every config field with its
                        default and allowed values
  errors                `error: <message>` on stderr, one line, exit 1
  Ctrl-C, SIGTERM       `interrupted at <where>; rerun the same command to
                        resume` on stderr, exit 130 (SIGINT) / 143 (SIGTERM)
  compilation cache     XLA programs are cached on disk (`enable_compile_cache`)
                        in $LOTTERY_CACHE/jax or ~/.cache/lottery/jax, so a
                        rerun skips compiling; LOTTERY_NO_COMPILE_CACHE=1 turns
                        it off

Recipes are found beside this package (configs/ next to experiments/): in a
checkout, in an editable install and in an installed wheel alike.
"""

from __future__ import annotations

import ast
import difflib
import functools
import gc
import importlib.util
import json
import os
import pathlib
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

import lottery

if getattr(lottery, "__file__", None) is None:
  # A directory named lottery/ in the working directory (the parent of a
  # checkout, or of a workdir such as /tmp/lottery/run) is imported as an
  # empty namespace package: look again without the working directory.
  _shadow = list(lottery.__path__)[0]
  sys.path[:] = [p for p in sys.path
                 if p not in ("", ".") and os.path.abspath(p) != os.getcwd()]
  del sys.modules["lottery"]
  import lottery  # pylint: disable=g-import-not-at-top,reimported
  if getattr(lottery, "__file__", None) is None:
    sys.exit(f"error: lottery: {_shadow!r} shadows the installed package; "
             "run from another directory")

from experiments import signals  # pylint: disable=g-import-not-at-top,wrong-import-position
from lottery import workdir as workdir_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from lottery.errors import LotteryError  # pylint: disable=g-import-not-at-top,wrong-import-position
from lottery.progress import NullProgress, Progress  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"

FLAGS = flags.FLAGS
_HELP = ("-h", "-?", "--help", "-help", "--helpshort", "-helpshort",
         "--helpfull", "-helpfull")
_CONFIG_ARG = re.compile(r"^--?config(=|$)")
_OVERRIDE_ARG = re.compile(r"^--?(?:no)?config\.([^=]+)")

RunFn = Callable[[ml_collections.ConfigDict, str, Progress], Any]


def field_choices() -> dict[str, tuple[str, ...]]:
  """Allowed values of the config fields that name a registered thing."""
  # pylint: disable=g-import-not-at-top
  from lottery import augment
  from lottery import config as config_lib
  from lottery import controls as controls_lib
  from lottery import data
  from lottery import loop
  from lottery import models
  from lottery import optim
  from lottery import pruning
  from lottery import scores
  return {
      "data.name": tuple(data.NAMES),
      "model.name": tuple(models.names()),
      "training.optimizer": tuple(optim.OPTIMIZERS),
      "training.schedule": tuple(optim.SCHEDULES),
      "pruning.scope": tuple(pruning.SCOPES),
      "pruning.score": tuple(scores.names()),
      "pruning.reset": tuple(lottery.imp.RESETS.names()),
      "pruning.schedule": tuple(config_lib.SCHEDULES),
      "controls": tuple(controls_lib.names()),
      "data.augment": tuple(augment.names()),
      "training.loop": tuple(loop.FORMS),
      "training.replicas": tuple(loop.REPLICA_FORMS),
  }


def _load_module(path: pathlib.Path):
  # A config file of one's own imports the modules beside it (a method
  # plug-in's); its folder goes last on the path, so it shadows nothing.
  folder = str(path.resolve().parent)
  if path.resolve().parent != CONFIGS_DIR.resolve() and folder not in sys.path:
    sys.path.append(folder)
  spec = importlib.util.spec_from_file_location(
      f"_lottery_recipe_{path.stem}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def recipes() -> dict[str, tuple[str, ...]]:
  """The recipes in configs/: {name: the arguments its ARGS allows}."""
  out = {}
  for path in sorted(CONFIGS_DIR.glob("*.py")):
    if path.name.startswith("_"):
      continue
    out[path.stem] = tuple(getattr(_load_module(path), "ARGS", ("",)))
  return out


def _recipe_method(name: str, args: Sequence[str]) -> str | None:
  """The method of recipe `name` (its config at its first argument of
  `args`), or None if it does not load."""
  try:
    return load_config(_spellings(name, args[:1])[0]).get("method", "imp")
  except LotteryError:
    return None


def _spellings(name: str, args: Sequence[str]) -> list[str]:
  return [f"{name}:{a}" if a else name for a in args]


def resolve_config(spec: str) -> str:
  """The file behind a --config value, as 'ABSPATH[:ARG]'.

  An existing file PATH[:ARG] is taken as is. Otherwise NAME[:ARG] (also
  'NAME.py' and 'configs/NAME.py', as the README's commands spell it) names
  configs/NAME.py beside this package, whatever the working directory.

  Raises:
    LotteryError: ('config: ...') if `spec` is neither a file nor a recipe.
  """
  path, sep, arg = spec.partition(":")
  if os.path.isfile(path):
    return os.path.abspath(path) + sep + arg
  name = path.removeprefix("configs/").removesuffix(".py")
  recipe = CONFIGS_DIR / f"{name}.py"
  if name and "/" not in name and os.sep not in name and recipe.is_file():
    return str(recipe) + sep + arg
  known = sorted(p.stem for p in CONFIGS_DIR.glob("*.py")
                 if not p.name.startswith("_"))
  close = difflib.get_close_matches(name, known, n=1)
  hint = f"did you mean {close[0]!r}? " if close else ""
  raise LotteryError(f"config: no recipe or file {path!r} ({hint}recipes: "
                     f"{', '.join(known)}) (got {spec!r})")


def _config_error(e: Exception) -> str:
  """An error of a config file's get_config, in words; ml_collections' own
  of a value of the wrong type (which names the types the other way
  round) as 'field F takes a value of type T, got V of type U'."""
  m = re.match(r"Could not override field '([^']+)' \(reference\)\. (.*) "
               r"is of original type <class '(\w+)'> and cannot be casted to "
               r"type <class '(\w+)'>", str(e))
  if isinstance(e, TypeError) and m:
    field, value, got, want = m.groups()
    return (f"field {field!r} takes a value of type {want}, got {value!r} "
            f"of type {got}")
  return f"{type(e).__name__}: {e}"


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of a --config value (recipe name or file, optional ':ARG').

  Raises:
    LotteryError: ('config: ...') for an unknown recipe or file, an ARG its
      ARGS does not list, or a config file that fails to load.
  """
  resolved = resolve_config(spec)
  path, sep, arg = resolved.partition(":")
  try:
    mod = _load_module(pathlib.Path(path))
  except Exception as e:  # A user's config file: report it on one line.
    raise LotteryError(f"config: {path!r} does not load ({type(e).__name__}: "
                       f"{e}) (got {spec!r})") from None
  args = getattr(mod, "ARGS", None)
  if args is not None and arg not in args:
    name = pathlib.Path(path).stem
    raise LotteryError(f"config: {name!r} takes one of "
                       f"{', '.join(_spellings(name, args))} (got {spec!r})")
  if not callable(getattr(mod, "get_config", None)):
    raise LotteryError(f"config: {path} defines no get_config() returning "
                       f"the config (got {spec!r})")
  try:
    config = mod.get_config(arg) if sep else mod.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise LotteryError(f"config: {path}:get_config failed "
                       f"({_config_error(e)}) (got {spec!r})") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise LotteryError(f"config: {path}:get_config must return a ConfigDict "
                       f"(got {type(config).__name__})")
  return config


def field_paths(config: ml_collections.ConfigDict, prefix: str = ""
                ) -> dict[str, Any]:
  """{'training.steps': 1500, ...}: every leaf of `config` by dotted path."""
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(field_paths(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def check_overrides(config: ml_collections.ConfigDict,
                    names: Sequence[str]) -> None:
  """Raises LotteryError for a --config.NAME that names no field of `config`.

  The message suggests the closest field:
  "config: no field 'trainig.steps' (did you mean 'training.steps'?)".
  """
  leaves = field_paths(config)
  known = set(leaves)
  for path in list(leaves):  # Subtrees may be overridden too.
    parts = path.split(".")
    known.update(".".join(parts[:i]) for i in range(1, len(parts)))
  for name in names:
    if name in known:
      continue
    from lottery import config as config_lib  # pylint: disable=g-import-not-at-top
    close = config_lib.suggest(name, list(leaves))
    hint = (f"did you mean {close!r}?" if close
            else "--help lists the fields")
    raise LotteryError(f"config: no field {name!r} ({hint})")


def _type_words(value: Any) -> str:
  if isinstance(value, bool):
    return "true or false"
  if isinstance(value, int):
    return "an integer"
  if isinstance(value, float):
    return "a number"
  if isinstance(value, str):
    return "a string"
  if isinstance(value, tuple):
    return "a tuple, e.g. \"('a', 'b')\""
  return f"a {type(value).__name__}"


def _block(config: ml_collections.ConfigDict, field: str
           ) -> ml_collections.ConfigDict | None:
  """The block of fields that `field` ('seeds') names, or None."""
  node = config
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node if isinstance(node, ml_collections.ConfigDict) else None


def _block_message(field: str, value: str,
                   block: ml_collections.ConfigDict) -> str:
  """'seeds: is a block of fields (...); set one, e.g. --config.seeds.num=3'.

  The example is a field that takes `value` (its type), 'num' first.
  """
  # In the order the config defines them (a ConfigDict iterates sorted).
  names = list(getattr(block, "_fields", None) or block)
  try:
    literal = ast.literal_eval(value)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    literal = value
  fits = [k for k in names
          if not isinstance(block[k], ml_collections.ConfigDict)
          and type(block[k]) is type(literal)]  # pylint: disable=unidiomatic-typecheck
  example = "num" if "num" in fits else (fits or names)[0]
  shown = value if fits else _format_value(block[example])
  return (f"{field}: is a block of fields ({', '.join(names)}); set one, "
          f"e.g. --config.{field}.{example}={shown}")


def flag_error_message(error: Exception,
                       config: ml_collections.ConfigDict | None) -> str:
  """One line for an absl flag error; '<field>: ...' for a config override."""
  text = " ".join(str(error).split())
  m = re.match(r"^flag --config\.([\w.]+)=(.*?): ", text)
  if m and config is not None:
    field, value = m[1], m[2]
    block = _block(config, field)
    if block is not None:
      return _block_message(field, value, block)
    current = field_paths(config).get(field)
    return f"{field}: must be {_type_words(current)} (got {value!r})"
  m = re.match(r"^flag --(\w+)=(.*?): (.*)$", text)
  if m:
    return f"{m[1]}: {m[3]} (got {m[2]!r})"
  return text


def _format_value(v: Any) -> str:
  return repr(v) if not isinstance(v, bool) else str(v).lower()


def help_text(doc: str, config: ml_collections.ConfigDict, spec: str, *,
              choices: Mapping[str, Sequence[str]] | None = None,
              full: bool = False, method: str | None = None) -> str:
  """--help: the launcher's doc, its flags, the recipes (of `method`, for a
  launcher of one method) and config fields."""
  choices = {**field_choices(), **(choices or {})}
  lines = [(doc or "").strip(), "", "Flags:"]
  own = {f.name: f for module in (__name__, sys.argv[0], "__main__")
         for f in FLAGS.get_flags_for_module(module)}
  for f in own.values():
    default = f.default_as_str if f.default is not None else "none"
    lines.append(f"  --{f.name}: {f.help} (default: {default})")
  lines += ["", f"Recipes (--config=NAME[:ARG], in {CONFIGS_DIR}"
            f"{'' if method is None else f' ({method!r} ones)'}):"]
  for name, args in recipes().items():
    if method is None or _recipe_method(name, args) == method:
      lines.append("  " + "  ".join(_spellings(name, args)))
  if method is not None:
    lines.append("  (other methods' recipes: python -m experiments.run "
                 "--help)")
  from lottery import config as config_lib  # pylint: disable=g-import-not-at-top
  from lottery import driver  # pylint: disable=g-import-not-at-top
  try:
    _, shown, method = driver.resolve(config)
    title = f"the fields of method {method.name!r}"
  except LotteryError:  # A broken recipe still gets its fields listed.
    shown, title = config, "the fields"
  fields = field_paths(shown)
  width = max(map(len, fields)) + 2
  lines += ["", f"Config fields (--config.FIELD=VALUE): {title}, with the "
            f"defaults of --config={spec}:"]
  for path, value in fields.items():
    line = f"  {path:<{width}}{_format_value(value)}"
    if path in choices:
      kind = "any of" if isinstance(value, tuple) else "one of"
      line += f"  ({kind}: {', '.join(choices[path])})"
    what = config_lib.FIELD_HELP.get(path)
    if what:
      line += f"\n  {'':<{width}}{what}"
    lines.append(line)
  if full:
    lines += ["", "All flags:", FLAGS.get_help()]
  else:
    lines += ["", "--helpfull also lists absl's own flags."]
  return "\n".join(lines)


NO_COMPILE_CACHE = "LOTTERY_NO_COMPILE_CACHE"


def enable_compile_cache() -> str | None:
  """Turns on JAX's persistent compilation cache for this process.

  The cache lives in $LOTTERY_CACHE/jax, or ~/.cache/lottery/jax (beside the
  MNIST-1D cache, `lottery.data.cache_dir`), unless JAX's own
  JAX_COMPILATION_CACHE_DIR names one. Every program is cached, however
  quickly it compiled: a run compiles dozens of small ones, which together
  cost more than the training of a small run. A cached program is the same
  executable, so results are bit-identical with and without the cache. The
  directory may be deleted at any time; it is not size-limited.

  Returns:
    The cache directory, or None if LOTTERY_NO_COMPILE_CACHE is set (to
    anything but '' or '0') or the directory cannot be created.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from lottery import data
  if os.environ.get(NO_COMPILE_CACHE, "") not in ("", "0"):
    return None
  path = jax.config.jax_compilation_cache_dir
  if not path:
    path = os.fspath(data.cache_dir() / "jax")
    try:
      os.makedirs(path, exist_ok=True)
    except OSError:
      return None  # A read-only home: run without the cache.
    jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


Interrupted = signals.Interrupted


def install_signal_handlers() -> None:
  """SIGINT and SIGTERM: one line and exit 130 / 143 (`signals`)."""
  signals.install()


class _Progress(Progress):
  """Progress that delivers a signal dropped on its way (`signals.check`)
  at every chunk boundary."""

  def job_step(self, step: int) -> None:
    signals.check()
    super().job_step(step)


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` on one line of stderr and exits 1."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr,
        flush=True)
  sys.exit(1)


def _prepare(argv: list[str], default_config: str
             ) -> tuple[list[str], str, ml_collections.ConfigDict]:
  """Resolves --config (moved first: overrides apply to it in any order) and
  checks every --config.FIELD before absl or ml_collections see them."""
  rest, spec, i = [argv[0]], default_config, 1
  while i < len(argv):
    a = argv[i]
    if a == "--":
      rest += argv[i:]
      break
    m = _CONFIG_ARG.match(a)
    if m and m[1] == "=":
      spec = a.split("=", 1)[1]
    elif m:
      if i + 1 >= len(argv):
        raise LotteryError("config: --config needs a value (got nothing)")
      spec = argv[i + 1]
      i += 1
    else:
      rest.append(a)
    i += 1
  config = load_config(spec)
  overrides = [m[1] for a in rest if (m := _OVERRIDE_ARG.match(a))]
  check_overrides(config, overrides)
  # absl would append a repeated tuple override to the first one's value (and
  # keep the last of any other): refuse the ambiguity.
  seen = set()
  for name in overrides:
    if name in seen:
      raise LotteryError(f"--config.{name}: given twice")
    seen.add(name)
  resolved = resolve_config(spec)
  return [rest[0], f"--config={resolved}", *rest[1:]], spec, config


def _parse_flags(argv: list[str], config) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(flag_error_message(e, config))


def _resume_state(workdir: str, saved: ml_collections.ConfigDict) -> str:
  """What a run of `saved` does with the run `workdir` holds (one that
  `workdir.check` accepts): extends it, resumes it, or finds it finished."""
  old = lottery.load_config(workdir).get("pruning", {}).get("rounds")
  new = saved.get("pruning", {}).get("rounds")
  if isinstance(old, int) and isinstance(new, int) and new > old:
    return f"extends the run there from {old} to {new} rounds"
  try:
    finished = bool(lottery.tickets.summary(workdir).get("finished"))
  except (LotteryError, OSError, ValueError):
    finished = False
  return ("holds this run, finished: a rerun trains nothing" if finished
          else "resumes the run there")


def _join_processes(address: str | None, num: int, pid: int, *,
                    dry_run: bool = False) -> bool:
  """Joins a multi-host run (JAX's distributed runtime) when asked;
  whether this process writes (process 0) or stays quiet. `dry_run`: the
  flags' checks only, joining nothing."""
  if address is None:
    if num != 1 or pid != 0:
      raise LotteryError("coordinator_address: needed with --num_processes "
                         f"or --process_id (got {address!r})")
    return True
  from lottery import parallel  # pylint: disable=g-import-not-at-top
  if dry_run:
    parallel.check_hosts(address, num, pid)
    return pid == 0
  parallel.initialize(address, num, pid)
  # JAX's preemption notifier takes SIGTERM when the process joins: this
  # command's handlers take it back (one line, exit 143).
  install_signal_handlers()
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


# The config fields that hold a path, whose '~' the command line expands.
PATH_FIELDS = ("data.path", "data.data_dir", "data.cache_dir",
               "stability.source_workdir")


def _expand_paths(config) -> None:
  for field in PATH_FIELDS:
    block, _, name = field.partition(".")
    value = config.get(block, {}).get(name)
    if isinstance(value, str) and value.startswith("~"):
      config[block][name] = os.path.expanduser(value)


def _main(argv: list[str], *, run: RunFn, config_flag, workdir_flag,
          dry_run_flag, validate, progress: Progress, hosts) -> None:
  if len(argv) > 1:
    raise LotteryError(f"command line: unexpected arguments (got {argv[1:]})")
  # Orbax logs every save at INFO, and an import sets absl's verbosity to
  # INFO, so keep to warnings unless asked on the command line.
  if not any(a.startswith(("--verbosity", "-v", "--v=")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)
  config, workdir = config_flag.value, workdir_flag.value
  # The shell leaves a '~' after '=' as it is: expanded here, as a path.
  workdir = workdir and os.path.expanduser(workdir)
  _expand_paths(config)
  if not workdir and not dry_run_flag.value:
    raise LotteryError("workdir: required, e.g. --workdir=/tmp/lottery_runs/run "
                       "(got nothing)")
  if dry_run_flag.value:
    _join_processes(*(f.value for f in hosts), dry_run=True)
    from lottery import driver  # pylint: disable=g-import-not-at-top
    _, saved, _ = driver.resolve(config)
    print(json.dumps(workdir_lib.config_json(saved), indent=1,
                     sort_keys=True), flush=True)
    # Then everything the run checks before it writes (the data loaded,
    # the model built): a refusal is its one line.
    resumes = (validate(config, workdir) if validate is not None else
               bool(workdir) and workdir_lib.check(workdir, saved))
    if workdir:  # Without one, the config alone.
      state = _resume_state(workdir, saved) if resumes else "new run"
      print(f"workdir: {os.path.abspath(workdir)} ({state})")
    return
  if not _join_processes(*(f.value for f in hosts)):
    progress.close()
    progress = NullProgress()  # One process reports: process 0.
  run(config, workdir, progress)
  signals.check()  # A signal dropped on its way (see `signals`).


def _command(run, doc, default_config, method, validate, choices, argv,
             progress) -> None:
  """`main`'s command: parses the command line and runs it."""
  enable_compile_cache()
  argv, spec, config = _prepare(argv, default_config)
  name = config.get("method")
  if method is not None and name != method:
    raise LotteryError(
        f"method: {spec!r} is {'an' if str(name)[:1] in 'aeiou' else 'a'} "
        f"{name!r} recipe and "
        f"experiments.{method} runs {method!r} ones; run it with python -m "
        f"experiments.run --config={spec}")
  config_flag = config_flags.DEFINE_config_file(
      "config", default_config,
      "Recipe NAME[:ARG] in configs/, or a config file PATH[:ARG].",
      lock_config=True, sys_argv=argv)
  workdir_flag = flags.DEFINE_string(
      "workdir", None, "Directory of the run (rerun on it to resume).")
  dry_run_flag = flags.DEFINE_bool(
      "dry_run", False, "Print the resolved config, check everything the "
      "run checks before writing (data, model, workdir) and, given "
      "--workdir, say whether it starts or resumes a run; write nothing.")
  hosts = (
      flags.DEFINE_string(
          "coordinator_address", None, "Several hosts: HOST:PORT of "
          "process 0's coordinator (jax.distributed.initialize), or 'auto' "
          "where JAX detects the cluster (TPU pod slices, SLURM)."),
      flags.DEFINE_integer("num_processes", 1, "Several hosts: how many "
                           "processes join the run.", lower_bound=1),
      flags.DEFINE_integer("process_id", 0, "Several hosts: this "
                           "process's index (0 writes the workdir).",
                           lower_bound=0))
  if any(a in _HELP for a in argv[1:]):
    print(help_text(doc, config, spec, choices=choices, method=method,
                    full=any(a.endswith("helpfull") for a in argv)))
    sys.exit(0)
  app.run(functools.partial(
      _main, run=run, config_flag=config_flag, workdir_flag=workdir_flag,
      dry_run_flag=dry_run_flag, validate=validate, progress=progress,
      hosts=hosts),
          argv=argv, flags_parser=functools.partial(_parse_flags,
                                                    config=config))


def main(run: RunFn, *, doc: str, default_config: str = "mnist1d",
         method: str | None = None,
         validate: Callable[[ml_collections.ConfigDict, str | None], bool]
         | None = None,
         choices: Mapping[str, Sequence[str]] | None = None,
         argv: Sequence[str] | None = None) -> NoReturn:
  """Parses the command line, calls `run(config, workdir, progress)`, exits.

  Args:
    run: runs (or resumes) the experiment; its return value is ignored.
    doc: the launcher's docstring, shown first by --help.
    default_config: the --config used when none is given.
    method: the method this launcher runs (an alias such as experiments.pai);
      a recipe of another method is refused in one line. None: any.
    validate: for --dry_run, validate(config, workdir or None) checks
      everything the run checks before writing (raising LotteryError) and
      says whether the workdir holds the run already; None: the config
      (`driver.resolve`) and the workdir only.
    choices: allowed values of extra fields, for --help.
    argv: the command line (default: sys.argv).
  """
  install_signal_handlers()
  progress = _Progress()
  argv = list(sys.argv if argv is None else argv)
  try:
    try:
      signals.running(progress.where, progress.close)
      _command(run, doc, default_config, method, validate, choices, argv,
               progress)
    except SystemExit as e:  # absl's app.run ends with sys.exit.
      if e.code in (0, None):
        signals.check()
      raise
  except LotteryError as e:
    signals.done()
    progress.close()
    fail(_told(str(e)))
  except PermissionError as e:  # Not the workdir's writes (a LotteryError).
    signals.done()
    progress.close()
    what = f"{os.fspath(e.filename)!r}: " if e.filename is not None else ""
    fail(_told(f"{what}{e.strerror or e} (check its permissions)"))
  except Exception as e:  # pylint: disable=broad-except
    oom = _out_of_memory(e)
    if oom is None:
      raise
    signals.done()
    progress.close()
    said = (str(oom).strip().splitlines() or [type(oom).__name__])[0]
    fail(_told(f"out of memory at {progress.where()}: {said[:200]}; what was "
         f"finished is kept: rerun the same command where memory is free, "
         f"or use a smaller model, batch or dataset in a new --workdir"))
  except KeyboardInterrupt as e:
    # A second signal while exiting ends the process at once (same line).
    signals.done()
    progress.close()
    signals.exit(getattr(e, "signum", signal.SIGINT), progress.where())
  finally:
    signals.done()
  sys.exit(0)


def _told(message: str) -> str:
  """`message`, once the other processes of a multi-host run are told that
  this one stops with it (`parallel.announce_failure`)."""
  if "jax" in sys.modules:  # Else it never joined any.
    from lottery import parallel  # pylint: disable=g-import-not-at-top
    parallel.announce_failure(message)
  return message


def _out_of_memory(e: BaseException | None) -> BaseException | None:
  """The error of `e`'s chain (its causes and contexts) that says the host
  or the device ran out of memory, or None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    text = str(e).lower()
    # XLA's words: 'Out of memory allocating ...' (the CPU), 'Failed to
    # allocate request for ...' (a GPU's allocator).
    if isinstance(e, MemoryError) or (
        type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and
        text.startswith("resource_exhausted") and
        ("memory" in text or "allocat" in text)):
      return e
    e = e.__cause__ if e.__cause__ is not None else (
        None if e.__suppress_context__ else e.__context__)
  return None


def launch(doc: str, default_config: str,
           method: str | None = None) -> NoReturn:
  """A launcher's whole body: `--log_steps`, then the one driver
  (`lottery.driver.run`) on the recipe, which must be of `method` (None:
  any method, the recipe's own)."""
  import lottery  # pylint: disable=g-import-not-at-top,redefined-outer-name,reimported
  log_steps = flags.DEFINE_bool("log_steps", False,
                                "Log test metrics at every evaluation.")

  def run(config, workdir, progress):
    return lottery.driver.run(config, workdir, method=method,
                              progress=progress, log_steps=log_steps.value)

  def validate(config, workdir):
    return lottery.driver.check(config, workdir, method=method)

  try:
    main(run, doc=doc, default_config=default_config, method=method,
         validate=validate)
  finally:
    # The process ends here, everything written and closed (the driver
    # waits for its writes). Frozen, the objects of JAX's and the other
    # imports are not traversed by the interpreter's final collections:
    # about 0.3 s of every command, 15% of a one-level LeNet job
    # (docs/performance.md). atexit handlers still run.
    gc.freeze()
