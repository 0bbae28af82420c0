"""The estimated time of a sweep's points, from times measured on this machine.

A point whose workdir already has evaluation records is estimated from them:
its remaining steps at the median steps/s of its records (that rate counts
the evaluations; start-up and compiling are left out). Any other point is
timed by running its own train.py command with `--estimate_time` (start-up,
compiling, a timed chunk of steps and one evaluation; nothing is written,
`cpg_jax.training.timing`); points with the same command apart from the
workdir are timed once.

No JAX here: the timing runs are subprocesses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from typing import Sequence

import numpy as np

from cpg_jax.training import metrics_log
from cpg_jax.training import timing


@dataclasses.dataclass(frozen=True)
class PointEstimate:
  """The estimate of one point: seconds (None when it could not be timed)
  and how it was obtained, in words."""

  index: int
  seconds: float | None
  how: str


def _num_steps(command: Sequence[str], workdir: str) -> int | None:
  """num_steps of a point: its command's override, else its config.json."""
  for arg in command:
    if arg.startswith("--config.num_steps="):
      return int(arg.split("=", 1)[1].replace("_", ""))
  try:
    with open(os.path.join(workdir, metrics_log.CONFIG_FILE)) as f:
      return int(json.load(f)["num_steps"])
  except (OSError, ValueError, KeyError):
    return None


def from_metrics(index: int, command: Sequence[str], workdir: str) -> PointEstimate | None:
  """The estimate of a point that has run before, or None."""
  records = metrics_log.read_records(workdir)
  num_steps = _num_steps(command, workdir)
  rates = [r.steps_per_sec for r in records if r.step > 0 and r.steps_per_sec > 0]
  if not records or num_steps is None:
    return None
  done = records[-1].step
  if done >= num_steps:
    return PointEstimate(index, 0.0, f"finished ({done:,} steps)")
  if not rates:
    return None
  rate = float(np.median(rates))
  return PointEstimate(
      index, (num_steps - done) / rate,
      f"from its metrics.jsonl: {done:,} of {num_steps:,} steps done at {rate:,.0f} "
      "steps/s, evaluations included; start-up and compiling not included")


def measure(index: int, command: Sequence[str]) -> tuple[PointEstimate, timing.Timing | None]:
  """Times one point's command with `--estimate_time` (a subprocess)."""
  argv = [a for a in command if not a.startswith("--workdir=")] + ["--estimate_time"]
  result = subprocess.run(argv, capture_output=True, text=True)
  for line in result.stdout.splitlines():
    if line.startswith(timing.JSON_PREFIX):
      measured = timing.Timing.from_json(line[len(timing.JSON_PREFIX):])
      return PointEstimate(index, measured.total_seconds, measured.summary()), measured
  reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
  return PointEstimate(index, None, f"could not be timed: {reason}"), None


def estimate_points(commands: Sequence[tuple[list[str], str]], selected: Sequence[int],
                    progress=print) -> list[PointEstimate]:
  """One estimate per selected point (see the module docstring)."""
  estimates, timed = [], {}
  for i in selected:
    command, workdir = commands[i]
    known = from_metrics(i, command, workdir)
    if known is None:
      key = tuple(a for a in command if not a.startswith("--workdir="))
      if key not in timed:
        progress(f"  timing point #{i} (a short run of its command, compiled first) ...")
        timed[key] = measure(i, command)[0]
      known = dataclasses.replace(timed[key], index=i)
    estimates.append(known)
  return estimates


def format_estimates(estimates: Sequence[PointEstimate], names: Sequence[str]) -> str:
  """The total and one line per point."""
  known = [e.seconds for e in estimates if e.seconds is not None]
  missing = len(estimates) - len(known)
  total = metrics_log.format_duration(sum(known))
  head = (f"Estimated time on this machine: {total} for {len(estimates)} point"
          + "s" * (len(estimates) != 1) + ", one after another"
          + (f" ({missing} could not be timed and are not included)" if missing else ""))
  lines = [head]
  for e in estimates:
    duration = "?" if e.seconds is None else metrics_log.format_duration(e.seconds)
    if e.seconds is not None and e.how.startswith(duration):
      lines.append(f"  #{e.index} {names[e.index]}: {e.how}")
    else:
      lines.append(f"  #{e.index} {names[e.index]}: {duration} ({e.how})")
  return "\n".join(lines)
