"""Ctrl-C (SIGINT) and SIGTERM at any moment: one line on stderr, exit 130 /
143.

Imported first by every launcher (before absl, JAX or lottery), so that a
signal during the imports is handled too. Two modes:

  'exit'   (the default: start-up before `cli.main` runs the command, and
           once the command is done) -- nothing is being written: the
           handler prints the line and ends the process at once.
  'raise'  (while the command runs) -- the handler raises `Interrupted` in
           the main thread, so the run unwinds through its `finally` blocks
           (closing writers) before the launcher prints the line and exits.

Python drops an exception raised where it cannot propagate (a gc callback
such as JAX's `_xla_gc_callback`, a finalizer, an atexit callback) with an
'Exception ignored in ...' report. The handler does not raise inside a
known such callback, and `sys.unraisablehook` silences a dropped
`Interrupted`; either way the signal is still pending and is delivered
again a moment later (a SIGALRM timer; nor does it raise inside
`threading` or the import system, where a lock could stay held), and
`check` (at every chunk boundary, and once the command returns) raises it,
so it is never lost. Only a signal in the interpreter's own start-up, before
the launcher's first line, is Python's.

Once the run has unwound, `exit` ends the process without the interpreter's
finalization: an interrupted run may leave library threads (orbax's event
loop, XLA's pools) mid-task, and finalizing around them can crash or hang.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Code names of callbacks whose exceptions Python drops ('Exception ignored').
_UNSAFE = frozenset({"_xla_gc_callback", "__del__"})
_REDELIVER_S = 0.02
# Frames of the import system (`importlib._bootstrap` and its external part).
_IMPORT_SYSTEM = ("<frozen importlib._bootstrap",
                  os.path.join(os.path.dirname(importlib.__file__),
                               "_bootstrap"))

_mode = "exit"
_pending: int | None = None  # The first signal not yet seen propagating.
_where: Callable[[], str] = lambda: "start-up"
_before_exit: Callable[[], None] = lambda: None


class Interrupted(KeyboardInterrupt):
  """Raised by the SIGINT / SIGTERM handler: the run unwinds through its
  `finally` blocks (closing writers) before the launcher exits."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def message(where: str) -> str:
  return f"interrupted at {where}; rerun the same command to resume"


def exit(signum: int, where: str) -> NoReturn:  # pylint: disable=redefined-builtin
  """Prints the line and ends the process at once: streams flushed, no
  interpreter finalization (see the module doc)."""
  for s in SIGNALS:  # A second signal now ends the process at once.
    signal.signal(s, signal.SIG_DFL)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass
  os.write(2, (message(where) + "\n").encode())
  os._exit(128 + signum)  # pylint: disable=protected-access


def _exit_now(signum: int) -> NoReturn:
  """Prints the line and ends the process (nothing is being written)."""
  for s in SIGNALS:
    signal.signal(s, signal.SIG_DFL)
  try:
    _before_exit()
    where = _where()
  except Exception:  # pylint: disable=broad-except
    where = "start-up"
  exit(signum, where)


def _unsafe(frame) -> bool:
  """Whether raising at `frame` could be lost or leave a lock held: inside
  a callback whose exceptions Python drops, inside `threading` or the
  import system (a lock acquired and not yet guarded, such as the global
  import lock: a writer thread importing a module would then wait for it
  forever, and the main thread for the writer), or inside this module's
  unraisable hook."""
  while frame is not None:
    code = frame.f_code
    if (code.co_name in _UNSAFE or code.co_filename == threading.__file__ or
        code.co_filename.startswith(_IMPORT_SYSTEM) or
        (code.co_filename == __file__ and code.co_name == "_unraisable")):
      return True
    frame = frame.f_back
  return False


def _redeliver(signum: int) -> None:
  """Runs the handler again shortly, at a later point of the main thread:
  a one-shot real-time timer (SIGALRM), so no thread is started and no lock
  taken here (a handler may run while the main thread holds any lock)."""
  del signum
  signal.setitimer(signal.ITIMER_REAL, _REDELIVER_S)


def _alarm(signum, frame):
  del signum
  if _pending is not None and _mode == "raise":
    _handler(_pending, frame)


def _handler(signum, frame):
  global _pending
  if _pending is None:
    _pending = signum
  if _mode == "exit":
    _exit_now(_pending)
  if _unsafe(frame):
    _redeliver(signum)
    return
  raise Interrupted(_pending)


def _unraisable(args, _default=sys.unraisablehook):
  if isinstance(args.exc_value, Interrupted):
    if _mode == "raise" and _pending is not None:
      _redeliver(_pending)
    return  # Dropped where it was raised; delivered again: no report.
  _default(args)


def install() -> None:
  """SIGINT and SIGTERM go to this module's handler (see the module doc)."""
  if threading.current_thread() is not threading.main_thread():
    return
  sys.unraisablehook = _unraisable
  for s in SIGNALS:
    signal.signal(s, _handler)
  signal.signal(signal.SIGALRM, _alarm)


def running(where: Callable[[], str], before_exit: Callable[[], None]
            ) -> None:
  """The command runs from now on: raise `Interrupted`. `where()` names the
  position for the line; `before_exit()` clears the progress bar."""
  global _mode, _where, _before_exit
  _where, _before_exit = where, before_exit
  _mode = "raise"
  if _pending is not None:
    raise Interrupted(_pending)


def done() -> None:
  """The command is over (its outcome decided): a signal from now on
  prints the line and exits at once."""
  global _mode
  _mode = "exit"


def pending() -> int | None:
  """The signal received and not yet delivered as `Interrupted`, if any."""
  return _pending


def delivered() -> None:
  """The launcher has caught the `Interrupted`: nothing is pending."""
  global _pending
  _pending = None


def check() -> None:
  """Raises `Interrupted` if a signal arrived and was dropped on its way
  (called at chunk boundaries and when the command returns)."""
  if _pending is not None and _mode == "raise":
    raise Interrupted(_pending)
