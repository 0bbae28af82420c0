"""Optional TensorBoard event files: `<workdir>/tensorboard/` (`config.tensorboard`).

Scalars, under these tags:
  eval/policy_value_mean, eval/policy_value/seed_<s>   at each evaluation
  eval/expected_value_mean, eval/recall_mean           at each evaluation
  train/loss, train/reward, train/steps_per_sec        at each progress line
(loss and reward: means over the seeds and the steps of the chunk; seeds are
numbered by their config seed, `seed .. seed + num_seeds - 1`).

Written with tensorboardX (no TensorFlow), by the primary process only, and
flushed at every checkpoint, so the events up to the latest checkpoint are on
disk whenever a run is stopped or killed. A resumed run first rewrites the
directory's event files to keep only events up to the step it resumes from
(the steps after it are recomputed, as in metrics.jsonl), then writes a new
event file. TensorBoard reads every event file of the directory as one run,
so it shows each step once. A fresh start (no checkpoint) removes the old
event files.

    tensorboard --logdir <workdir>/tensorboard   (or the parent of many workdirs)

Event files are TFRecord-framed `Event` protocol buffers: per record an
8-byte little-endian length, its masked CRC-32C, the data, the data's masked
CRC-32C. `read_events` reads them back (a torn last record is skipped).
"""

from __future__ import annotations

import os
import struct
import time
from typing import Iterator

import numpy as np

from cpg_jax.training import metrics_log

DIRECTORY = "tensorboard"
_FILE_MARK = ".out.tfevents."


def event_files(logdir: str) -> list[str]:
  """The event files of `logdir`, oldest first (by name: the start time)."""
  if not os.path.isdir(logdir):
    return []
  return sorted(os.path.join(logdir, n) for n in os.listdir(logdir) if _FILE_MARK in n)


def _records(path: str) -> Iterator[bytes]:
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  at = 0
  while at + 12 <= len(data):
    header = data[at:at + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[at + 8:at + 12])
    end = at + 12 + length + 4
    if header_crc != masked_crc32c(header) or end > len(data):
      return  # A record cut short by a kill: nothing after it is trusted.
    payload = data[at + 12:at + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[end - 4:end])
    if payload_crc != masked_crc32c(payload):
      return
    yield payload
    at = end


def read_events(path: str) -> list:
  """The `Event` protocol buffers of one event file, in order."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for payload in _records(path):
    event = event_pb2.Event()
    event.ParseFromString(payload)
    events.append(event)
  return events


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value), ...] over every event file of `logdir`."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in event_files(logdir):
    for event in read_events(path):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return scalars


def drop_events_after(logdir: str, step: int) -> None:
  """Keeps only the summaries at steps <= `step` (each file rewritten via a
  temporary file and a rename; a file left without summaries is removed)."""
  from tensorboardX.record_writer import RecordWriter  # pylint: disable=g-import-not-at-top
  for path in event_files(logdir):
    events = read_events(path)
    kept = [e for e in events if not e.HasField("summary") or e.step <= step]
    if not any(e.HasField("summary") for e in kept):
      os.remove(path)
      continue
    if len(kept) == len(events):
      continue
    tmp = f"{path}.tmp.{os.getpid()}"
    writer = RecordWriter(tmp)
    for event in kept:
      writer.write(event.SerializeToString())
    writer.flush()
    writer.close()
    os.replace(tmp, path)


class TensorBoardLog:
  """The run's TensorBoard writer; does nothing unless enabled and primary.

  Args:
    workdir: the run's workdir (events go to `<workdir>/tensorboard`).
    enabled: `config.tensorboard`.
    is_primary: whether this process writes (process 0 of a multi-host run).
    resume_step: the checkpointed step the run resumes from, or None for a
      fresh start; later events of an earlier invocation are dropped.
    first_seed: the config seed of the first seed (tags name seeds by it).
  """

  def __init__(self, workdir: str, enabled: bool, is_primary: bool,
               resume_step: int | None, first_seed: int = 0):
    self.logdir = os.path.join(workdir, DIRECTORY)
    self._first_seed = first_seed
    self._writer = None
    if not (enabled and is_primary):
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    os.makedirs(self.logdir, exist_ok=True)
    drop_events_after(self.logdir, -1 if resume_step is None else resume_step)
    # tensorboardX names the file by the second it was opened in and truncates
    # an existing one: the nanoseconds (then the pid) keep two invocations of
    # one second apart, in or out of one process, and in order by name.
    self._writer = SummaryWriter(self.logdir, flush_secs=30,
                                 filename_suffix=f".{time.time_ns()}.{os.getpid()}")

  @property
  def active(self) -> bool:
    return self._writer is not None

  def progress(self, step: int, loss: float, train_reward: float,
               steps_per_sec: float) -> None:
    """The scalars of a progress line."""
    if self._writer is None:
      return
    for tag, value in (("train/loss", loss), ("train/reward", train_reward),
                       ("train/steps_per_sec", steps_per_sec)):
      self._writer.add_scalar(tag, float(value), step)

  def evaluation(self, record: metrics_log.EvalRecord) -> None:
    """The per-seed and mean policy value (and the means of the other
    evaluation metrics) of one metrics.jsonl record."""
    if self._writer is None:
      return
    values = record.seed_values("policy_value")
    for index, value in enumerate(values):
      self._writer.add_scalar(f"eval/policy_value/seed_{self._first_seed + index}",
                              float(value), record.step)
    for name in metrics_log.SEED_METRICS:
      mean = float(np.mean(record.seed_values(name)))
      self._writer.add_scalar(f"eval/{name}_mean", mean, record.step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    """Flushes and closes (idempotent)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
