"""Several processes (hosts): `jax.distributed`, the primary process, host copies.

Each process runs the same `train.py` with its own `--process_id` (or with
`--distributed` and JAX's cluster auto-detection: SLURM inside `srun`, Open
MPI, Cloud TPU pods). They see one global mesh of all their devices
(`training.mesh`); every process executes the same host loop, Orbax writes
the checkpoints from every process with one commit, and only the primary
process (process 0) writes `metrics.jsonl`, progress lines and plots.

A process that dies makes the next cross-process collective of the others
fail; `fail_fast_if_a_peer_dies` turns that into one clear line and an
immediate exit (code 3) instead of a hang in JAX's shutdown barrier. The
heartbeat timeout bounds the cases where no collective is in flight.
"""

from __future__ import annotations

import contextlib
import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from cpg_jax.user_errors import UserError

# Exit code of a process whose peer died (the survivors' code).
EXIT_PEER_LOST = 3
DEFAULT_HEARTBEAT_TIMEOUT_S = 30
DEFAULT_INITIALIZATION_TIMEOUT_S = 120


class DistributedError(UserError, RuntimeError):
  """The processes of a multi-process run do not fit together."""


def set_cpu_devices(count: int) -> None:
  """Splits this machine's CPU into `count` JAX devices (before JAX starts:
  for trying multi-device runs, or several processes, on one CPU host)."""
  if count < 1:
    raise DistributedError(f"--cpu_devices must be >= 1, got {count}")
  jax.config.update("jax_num_cpu_devices", count)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto_detect: bool = False,
               heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
               initialization_timeout_s: int = DEFAULT_INITIALIZATION_TIMEOUT_S) -> bool:
  """Starts `jax.distributed` when asked; returns whether it did.

  Asked: any of `coordinator_address`, `num_processes`, `process_id` given
  (JAX's own names), or `auto_detect` (JAX's cluster detection fills them).

  Raises:
    DistributedError: arguments missing, or the processes that joined do
      not match `num_processes` (JAX ignores a mismatch on a non-coordinator
      process; it is checked here).
  """
  explicit = (coordinator_address, num_processes, process_id)
  if not auto_detect and all(v is None for v in explicit):
    return False
  if not auto_detect and any(v is None for v in explicit):
    raise DistributedError(
        "a multi-process run needs all of --coordinator_address, --num_processes and "
        "--process_id (or --distributed to detect them from SLURM, Open MPI or a TPU pod)")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise DistributedError(
        f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_s,
      initialization_timeout=initialization_timeout_s)
  if num_processes is not None and jax.process_count() != num_processes:
    raise DistributedError(
        f"--num_processes={num_processes}, but the coordinator at {coordinator_address} "
        f"runs {jax.process_count()} processes; give every process the same count")
  return True


def is_primary() -> bool:
  """Whether this process writes the logs, the metrics and the plots."""
  return jax.process_index() == 0


def to_host(tree):
  """NumPy copies of (global) arrays, whole on every process."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process (every process gets the answer)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


@contextlib.contextmanager
def fail_fast_if_a_peer_dies():
  """In a multi-process run, a failed runtime call (a collective whose peer
  died) ends this process at once with `EXIT_PEER_LOST` and one line on
  stderr, skipping the shutdown barrier that would wait for the dead peer."""
  if jax.process_count() == 1:
    yield
    return
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    print(f"error: process {jax.process_index()} of {jax.process_count()}: a cross-process "
          f"operation failed, most likely because another process died "
          f"({str(e).splitlines()[0][:300]}). Restart every process with the same command "
          "to resume from the last checkpoint.", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access
