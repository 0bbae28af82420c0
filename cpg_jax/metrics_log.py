"""The run's written record: `config.json`, `metrics.jsonl`, progress lines.

`metrics.jsonl` holds one JSON object per evaluation, in step order. On resume
from a checkpoint at step t, lines after t (written by the interrupted run
after its last checkpoint) and any torn last line are dropped, so the file of
a resumed run equals the file of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


def atomic_write_text(path: str, text: str) -> None:
  """Writes via a temporary file and a rename: readers never see half a file."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The complete records of `metrics.jsonl` (a torn last line is skipped)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break  # A write cut short by a kill: nothing after it is trusted.
  return records


def _jsonable(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None  # JSON has no NaN/inf; null says "not a number".
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


class MetricsLog:
  """Appends evaluation records to `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)

  def truncate_after(self, step: int) -> None:
    """Keeps the complete records with `record["step"] <= step`."""
    kept = [r for r in read_metrics(os.path.dirname(self.path)) if r["step"] <= step]
    atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def append(self, record: Mapping[str, Any]) -> None:
    line = json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"
    with open(self.path, "a") as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())


class Progress:
  """Human-readable progress lines with steps/s and ETA on stdout."""

  def __init__(self, total_steps: int, first_step: int, stream=sys.stdout):
    self.total = total_steps
    self.stream = stream
    self._last_time = time.perf_counter()
    self._last_step = first_step

  def rate(self, step: int) -> float:
    """Steps per second since the previous call (and resets the clock)."""
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    rate = (step - self._last_step) / elapsed
    self._last_time, self._last_step = now, step
    return rate

  def line(self, step: int, steps_per_sec: float, fields: Mapping[str, float]) -> None:
    remaining = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
    eta = _format_duration(remaining)
    text = " ".join(f"{k}={v:.4g}" for k, v in fields.items())
    print(f"step {step}/{self.total} | {steps_per_sec:,.0f} steps/s | ETA {eta} | {text}",
          file=self.stream, flush=True)


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
