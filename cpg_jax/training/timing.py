"""How long a run of a config takes on this machine, measured on a short run.

`measure` builds the run as `train_and_evaluate` would (data, reference
values), compiles its chunk and evaluation ahead of time, runs one chunk to
warm up and times a second one and one evaluation; nothing is written. The
estimate of the whole run is start-up + compilation + num_steps x the step
time + the number of evaluations x the evaluation time (checkpoints take
milliseconds here). `train.py --estimate_time` prints it, and
`python -m cpg_jax.experiments.sweep ... --dry_run` adds it up over the
points of a sweep (reading `Timing` without JAX: JAX is imported by `measure`).
"""

from __future__ import annotations

import dataclasses
import json
import time

from cpg_jax.training.metrics_log import format_duration

JSON_PREFIX = "Timing (JSON): "


def num_evaluations(num_steps: int, eval_every: int) -> int:
  """Evaluations of a fresh run: step 0, every `eval_every`, and the last step."""
  return 1 + num_steps // eval_every + (num_steps % eval_every != 0)


@dataclasses.dataclass(frozen=True)
class Timing:
  """Measured times (seconds) and the run's size."""

  startup_seconds: float  # process start to the run built (imports, data, references)
  compile_seconds: float
  step_seconds: float  # one step of all seeds together
  eval_seconds: float  # one evaluation of all seeds
  num_steps: int
  num_evaluations: int
  measured_steps: int

  @property
  def total_seconds(self) -> float:
    return (self.startup_seconds + self.compile_seconds + self.num_steps * self.step_seconds
            + self.num_evaluations * self.eval_seconds)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "Timing":
    return cls(**json.loads(text))

  def summary(self) -> str:
    return (f"{format_duration(self.total_seconds)} = start-up {self.startup_seconds:.0f} s "
            f"+ compiling {self.compile_seconds:.0f} s + {self.num_steps:,} steps x "
            f"{self.step_seconds * 1e3:.3g} ms + {self.num_evaluations:,} evaluations x "
            f"{self.eval_seconds:.3g} s (measured on {self.measured_steps} steps)")


def measure(config, started: float, steps: int = 100) -> Timing:
  """Times the run of `config` (see the module docstring).

  Args:
    config: the experiment config (validated here).
    started: `time.perf_counter()` at the start of the process.
    steps: the length of the timed chunk (at most `num_steps`).
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from cpg_jax.training import compiled
  from cpg_jax.training import evaluation
  from cpg_jax.training import pipeline as pipeline_lib
  from cpg_jax.training import spec as spec_lib
  from cpg_jax.training import state as state_lib
  # pylint: enable=g-import-not-at-top
  spec = spec_lib.from_config(config)
  pipeline, env = pipeline_lib.build(spec)
  states = state_lib.init_states(pipeline, spec.seeds)
  evaluation.reference_values(pipeline, env, spec.env.seed)
  startup = time.perf_counter() - started
  steps = max(1, min(steps, spec.num_steps))
  programs = compiled.compile_run(pipeline, states, env, [steps])
  warm, _ = programs.chunk(states, env, steps)
  jax.block_until_ready(warm)
  start = time.perf_counter()
  jax.block_until_ready(programs.chunk(warm, env, steps))
  step_seconds = (time.perf_counter() - start) / steps
  start = time.perf_counter()
  jax.block_until_ready(programs.evaluate(warm, env))
  eval_seconds = time.perf_counter() - start
  return Timing(startup_seconds=startup, compile_seconds=programs.compile_seconds,
                step_seconds=step_seconds, eval_seconds=eval_seconds,
                num_steps=spec.num_steps,
                num_evaluations=num_evaluations(spec.num_steps, spec.eval_every),
                measured_steps=steps)
