"""The run's written record: `config.json`, `metrics.jsonl`, progress lines.

`metrics.jsonl` holds one `EvalRecord` per evaluation, as a JSON object, in
step order. On resume from a checkpoint at step t, lines after t (written by
the interrupted run after its last checkpoint) and any torn last line are
dropped, so the file of a resumed run equals the file of an uninterrupted
one. The loop writes records and the report reads them through the same
type.

NumPy and the standard library only: the report imports it without JAX.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

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


# The evaluation metrics recorded per seed (see `training.evaluation`).
SEED_METRICS = ("policy_value", "expected_value", "recall")


def _finite_or_none(value: float) -> float | None:
  return value if math.isfinite(value) else None  # JSON has no NaN/inf.


@dataclasses.dataclass(frozen=True)
class EvalRecord:
  """One evaluation point of a run: a line of `metrics.jsonl`.

  Attributes:
    step: the gradient step evaluated.
    policy_value, expected_value, recall: one value per seed (None where it
      was not a finite number).
    optimal_value: the optimal ESR with the optimal LSR (the reference line).
    optimal_esr_value: the optimal ESR with the run's own LSR.
    diverged: per seed, the step at which it diverged, or None.
    steps_per_sec: training speed over the chunk before this point (wall
      clock; the only field that differs between identical runs).
  """

  step: int
  policy_value: tuple[float | None, ...]
  expected_value: tuple[float | None, ...]
  recall: tuple[float | None, ...]
  optimal_value: float
  optimal_esr_value: float
  diverged: tuple[int | None, ...]
  steps_per_sec: float

  @classmethod
  def from_evaluation(cls, step: int, metrics: Mapping[str, Any], diverged,
                      diverged_step, reference: Mapping[str, float],
                      steps_per_sec: float) -> "EvalRecord":
    """A record from the evaluation's `[seeds]` arrays and the reference values."""
    per_seed = {name: tuple(float(v) for v in np.asarray(metrics[name], np.float64))
                for name in SEED_METRICS}
    flags = zip(np.asarray(diverged), np.asarray(diverged_step))
    return cls(step=int(step), **per_seed,
               optimal_value=float(reference["optimal_value"]),
               optimal_esr_value=float(reference["optimal_esr_value"]),
               diverged=tuple(int(s) if d else None for d, s in flags),
               steps_per_sec=float(steps_per_sec))

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> "EvalRecord":
    """Parses a line of `metrics.jsonl`. Files written before
    `optimal_esr_value` existed default it to the optimum; a file without
    `expected_value` or `recall` (written by another tool) reads as NaN."""
    seeds = len(record["policy_value"])
    # expected_value and recall are optional for files written by other tools.
    return cls(step=int(record["step"]),
               **{name: tuple(record.get(name, (None,) * seeds)) for name in SEED_METRICS},
               optimal_value=float(record["optimal_value"]),
               optimal_esr_value=float(record.get("optimal_esr_value",
                                                  record["optimal_value"])),
               diverged=tuple(record["diverged"]),
               steps_per_sec=float(record.get("steps_per_sec", 0.0)))

  def seed_values(self, name: str) -> np.ndarray:
    """float64 `[seeds]` of one per-seed metric, NaN where not finite."""
    return np.array([np.nan if v is None else v for v in getattr(self, name)], np.float64)

  def mean(self, name: str) -> float:
    return float(np.mean(self.seed_values(name)))

  @property
  def optimal_95(self) -> float:
    return 0.95 * self.optimal_value

  def to_json(self) -> dict[str, Any]:
    """The JSON object of the line (with per-metric mean and std over seeds)."""
    out: dict[str, Any] = {"step": self.step}
    for name in SEED_METRICS:
      values = self.seed_values(name)
      out[name] = [_finite_or_none(v) for v in values.tolist()]
      out[f"{name}_mean"] = _finite_or_none(float(np.mean(values)))
      out[f"{name}_std"] = _finite_or_none(float(np.std(values)))
    out["optimal_value"] = self.optimal_value
    out["optimal_esr_value"] = self.optimal_esr_value
    out["optimal_95"] = self.optimal_95
    out["diverged"] = list(self.diverged)
    out["steps_per_sec"] = self.steps_per_sec
    return out


def read_records(workdir: str) -> list[EvalRecord]:
  """The complete records of `<workdir>/metrics.jsonl` (a torn last line is
  skipped); [] if there is no file."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(EvalRecord.from_json(json.loads(line)))
      except (json.JSONDecodeError, KeyError, TypeError):
        break  # A write cut short by a kill: nothing after it is trusted.
  return records


class MetricsLog:
  """Appends evaluation records to `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)

  def truncate_after(self, step: int) -> None:
    """Keeps the complete records with `record.step <= step`."""
    kept = [r for r in read_records(os.path.dirname(self.path)) if r.step <= step]
    atomic_write_text(self.path, "".join(json.dumps(r.to_json()) + "\n" for r in kept))

  def append(self, record: EvalRecord) -> None:
    line = json.dumps(record.to_json()) + "\n"
    with open(self.path, "a") as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())


class Progress:
  """Human-readable progress lines with steps/s and ETA on stdout.

  The clock starts when the object is made: the loop makes it after the
  programs are compiled, so steps/s and the ETA (the remaining steps at the
  rate of the last interval, evaluations included) leave compilation out.
  """

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
    eta = format_duration(remaining)
    text = " ".join(f"{k}={v:.4g}" for k, v in fields.items())
    print(f"step {step}/{self.total} | {steps_per_sec:,.0f} steps/s | ETA {eta} | {text}",
          file=self.stream, flush=True)


def format_duration(seconds: float) -> str:
  """`1h02m03s`, `4m05s`, or `?` for an unknown (infinite) time."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
