"""Devices and hosts: the mesh a run trains on, and where arrays live on it.

A run lays its work over a `jax.sharding.Mesh` with two axes:

  replicas  the leading replicate axis of a stacked train state (seeds.num
            replicates trained together), split across devices;
  data      each batch split across devices (data parallelism); the
            gradient's mean over the batch becomes a cross-device sum.

`make_mesh` gives the replicate axis as many devices as divide the number of
replicates and the rest to the batch. With one device there is no mesh and
nothing changes. Every process of a multi-host run (`initialize`) builds the
same mesh over all processes' devices; each feeds only its own devices' slice
of the batch indices (`put_global`), and the arrays a host needs back (losses,
metrics, tickets) are gathered to every process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lottery.errors import LotteryError

AXES = ("replicas", "data")


def initialize(coordinator_address: str, num_processes: int,
               process_id: int) -> None:
  """Joins JAX's distributed runtime (before any other JAX call).

  On CPU the cross-process collectives use gloo. `coordinator_address='auto'`
  lets JAX find the cluster itself (TPU pod slices, SLURM, Open MPI): every
  host then runs the same command and the process counts are ignored.

  Raises:
    LotteryError: for an address without a port, or a process id outside
      [0, num_processes).
  """
  check_hosts(coordinator_address, num_processes, process_id)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address == "auto":
    jax.distributed.initialize()
    return
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except jax.errors.JaxRuntimeError as e:  # A port in use, say.
    said = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise LotteryError(f"coordinator_address: process {process_id} of "
                       f"{num_processes} could not join "
                       f"{coordinator_address!r} ({said[:200]})") from None


def check_hosts(coordinator_address: str, num_processes: int,
                process_id: int) -> None:
  """`initialize`'s checks of its arguments, joining nothing (--dry_run).

  Raises:
    LotteryError: for an address without a port, or a process id outside
      [0, num_processes).
  """
  if coordinator_address == "auto":
    return
  if ":" not in coordinator_address:
    raise LotteryError(f"coordinator_address: must be HOST:PORT (got "
                       f"{coordinator_address!r})")
  if not 0 <= process_id < num_processes:
    raise LotteryError(f"process_id: must be in [0, {num_processes}) (got "
                       f"{process_id})")


_BARRIERS = [0]
BARRIER_TIMEOUT_S = 3600
# Where a process that stops says so (`announce_failure`), for the others'
# waits in `barrier` and `agree`; and how often those look there.
_FAILED = "lottery:failed"
_POLL_MS = 1000


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def announce_failure(message: str) -> None:
  """Several processes: tells the others that this one stops (its one-line
  error), so that their waits in `barrier` and `agree` raise instead of
  waiting for it. A process inside a compiled collective is not told."""
  client = _client()
  if client is None:  # Not joined: one process.
    return
  try:
    client.key_value_set(f"{_FAILED}/{jax.process_index()}",
                         " ".join(message.split()) or "an error")
  except Exception:  # pylint: disable=broad-except
    pass  # The coordinator is gone: the others stop on their own.


def _wait_for(key: str) -> str:
  """The value posted under `key`, once there; LotteryError when another
  process announced that it stopped, or after BARRIER_TIMEOUT_S."""
  client, waited = _client(), 0
  while True:
    try:
      return client.blocking_key_value_get(key, _POLL_MS)
    except Exception as e:  # pylint: disable=broad-except
      if "DEADLINE_EXCEEDED" not in str(e):
        raise
    failed = client.key_value_dir_get(_FAILED)
    if failed:
      name, message = sorted(failed)[0]
      raise LotteryError(f"{message} (on process {name.rsplit('/', 1)[1]})")
    waited += _POLL_MS
    if waited >= BARRIER_TIMEOUT_S * 1000:
      raise LotteryError(f"hosts: the other processes did not reach "
                         f"{key.rsplit(':', 1)[1]!r} in {BARRIER_TIMEOUT_S} s")


def agree(name: str, value: str) -> list[str]:
  """Several processes: every process's `value`, by process index (each
  posts its own and waits for the others' through JAX's coordination
  service); one process: [value].

  Raises:
    LotteryError: when another process stopped (`announce_failure`).
  """
  if jax.process_count() == 1:
    return [value]
  _BARRIERS[0] += 1
  key = f"lottery:{_BARRIERS[0]}:{name}"
  _client().key_value_set(f"{key}/{jax.process_index()}", value)
  return [_wait_for(f"{key}/{i}") for i in range(jax.process_count())]


def barrier(name: str) -> None:
  """Several processes: each waits here until all have arrived (JAX's
  coordination service, not a device collective, so a process that is
  minutes behind -- still loading data, still compiling -- is waited for).

  Raises:
    LotteryError: when another process stopped (`announce_failure`).
  """
  agree(name, "")


def start_together(state: str) -> None:
  """Several processes: the check, before any of them writes or trains,
  that all start the same run. Each gives its view of the run (`state`:
  the config, the workdir and what it holds); views that differ (another
  command, a workdir another process cannot see) raise on every process.

  Raises:
    LotteryError: naming the process that differs from process 0, or (from
      `agree`) the one that stopped.
  """
  said = agree("start", state)
  for i, v in enumerate(said):
    if v != said[0]:
      raise LotteryError(
          f"hosts: process {i} starts another run than process 0 (another "
          f"config, workdir, or a workdir it sees otherwise): run the same "
          f"command on every process, with a --workdir every process reads")


def make_mesh(replicas: int, batch_size: int, devices=None) -> Mesh | None:
  """The mesh for `replicas` replicates of batches of `batch_size`.

  'replicas' gets gcd(replicas, #devices) devices; 'data' gets the largest
  divisor of the rest that divides the batch. Devices that fit neither are
  left idle (a warning is the caller's to give: see `describe`).
  None with one device.

  Raises:
    LotteryError: naming training.batch_size if the idle devices would
      leave a process of a multi-host run without any (each process feeds
      its own devices).
  """
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) == 1:
    return None
  r = math.gcd(replicas, len(devices))
  rest = len(devices) // r
  d = max(k for k in range(1, rest + 1) if rest % k == 0 and
          batch_size % k == 0)
  processes = {dev.process_index for dev in devices}
  left_out = processes - {dev.process_index for dev in devices[:r * d]}
  if left_out:
    raise LotteryError(
        f"training.batch_size: {batch_size} does not divide across the "
        f"{len(processes)} processes' {len(devices)} devices (the batch "
        f"splits over {d} of them, leaving process {min(left_out)} without "
        f"work); use a multiple of {rest}")
  used = np.asarray(devices[:r * d], dtype=object).reshape(r, d)
  return Mesh(used, AXES)


def describe(mesh: Mesh | None) -> str:
  """The mesh's one-line description, e.g. 'replicas=2 data=2 (4 devices)'."""
  total = len(jax.devices())
  if mesh is None:
    return f"replicas=1 data=1 ({total} device{'s' * (total > 1)})"
  r, d = mesh.shape["replicas"], mesh.shape["data"]
  idle = total - r * d
  return (f"replicas={r} data={d} ({total} devices"
          f"{f', {idle} idle' if idle else ''}; {jax.process_count()} "
          f"process{'es' * (jax.process_count() > 1)})")


def batch_sharding(mesh: Mesh, replicated: bool, ndim: int,
                   leading: int = 0) -> NamedSharding:
  """Batches (or batch indices): replicate axis over 'replicas', examples
  over 'data', after `leading` unsplit axes (e.g. the steps of a chunk)."""
  spec = [None] * leading + (["replicas"] if replicated else []) + ["data"]
  spec += [None] * (ndim - len(spec))
  return NamedSharding(mesh, P(*spec))


def state_sharding(mesh: Mesh, state: Any, replicated: bool) -> Any:
  """A train state's shardings: a stacked state split over 'replicas' (its
  shared step replicated); a plain one replicated on every device."""
  split = NamedSharding(mesh, P("replicas"))
  whole = NamedSharding(mesh, P())
  if not replicated:
    return jax.tree.map(lambda _: whole, state)
  out = jax.tree.map(lambda _: split, state)
  return out.replace(step=whole)


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host array (the same on every process) laid out as `sharding`; each
  process transfers only its own devices' parts."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def put_parts(read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
              idx: np.ndarray, x_shape: tuple[int, ...],
              x_sharding: jax.sharding.Sharding,
              y_sharding: jax.sharding.Sharding,
              keys: np.ndarray | None = None) -> tuple[jax.Array, jax.Array]:
  """(x, y) = read(idx) laid out as the two shardings, each process calling
  `read` only for the parts of `idx` its own devices hold (once per part).

  `read` maps an index array to (inputs of shape idx.shape + x_shape, labels
  of idx.shape); both shardings split idx's axes alike. With `keys` (of
  shape idx.shape + (k,)), `read(idx part, keys part)`.
  """
  parts = {}

  def part(index: tuple[slice, ...]):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in parts:
      parts[key] = (read(idx[index]) if keys is None else
                    read(idx[index], keys[index]))
    return parts[key]

  n = idx.ndim
  x = jax.make_array_from_callback(idx.shape + tuple(x_shape), x_sharding,
                                   lambda i: part(i[:n])[0])
  y = jax.make_array_from_callback(idx.shape, y_sharding,
                                   lambda i: part(i)[1])
  return x, y


def put_tree(tree: Any, shardings: Any) -> Any:
  """`put_global` over a pytree of host-identical arrays."""
  return jax.tree.map(lambda x, s: put_global(np.asarray(x), s), tree,
                      shardings)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array every device holds whole."""
  return NamedSharding(mesh, P())


def to_host(tree: Any) -> Any:
  """A pytree of (possibly multi-process) arrays as numpy arrays."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(get, tree)
