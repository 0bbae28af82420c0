"""A run's programs, compiled before training starts.

The chunk (`training.step.make_train_chunk`, one program per distinct chunk
length) and the evaluation are lowered and compiled ahead of time for the
run's actual states and environment. Compiling is then part of setup, not of
the first chunk: the progress line's steps/s and ETA measure training only,
the startup lines say how long compiling took, and an interrupt during
compilation exits at once (`training.interrupts`). The compiled programs are
the ones a first call of the jitted functions would have built.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable

import jax

from cpg_jax.environments.base import Environment
from cpg_jax.training import evaluation
from cpg_jax.training import step as step_lib
from cpg_jax.training.pipeline import Pipeline


@dataclasses.dataclass
class RunPrograms:
  """The compiled chunk per chunk length, the compiled evaluation, and how
  long compiling them took (seconds)."""

  chunks: dict[int, Callable[[Any, Environment], Any]]
  evaluate: Callable[[Any, Environment], dict]
  compile_seconds: float

  def chunk(self, states, env: Environment, num_steps: int):
    """`num_steps` steps of every seed: (states, metrics `[num_steps, seeds]`)."""
    return self.chunks[num_steps](states, env)


def compile_run(pipeline: Pipeline, states, env: Environment, chunk_lengths: Iterable[int],
                step_fn: Callable = step_lib.train_step,
                mesh: jax.sharding.Mesh | None = None) -> RunPrograms:
  """Compiles the chunk for every length in `chunk_lengths` and the evaluation
  (on `mesh` when given: `states` and `env` are then placed on it)."""
  start = time.perf_counter()
  chunk = step_lib.make_train_chunk(pipeline, step_fn, mesh)
  chunks = {n: chunk.lower(states, env, n).compile() for n in sorted(set(chunk_lengths))}
  evaluate = evaluation.make_evaluate(pipeline, mesh).lower(states, env).compile()
  return RunPrograms(chunks=chunks, evaluate=evaluate,
                     compile_seconds=time.perf_counter() - start)
