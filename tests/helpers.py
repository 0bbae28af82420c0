"""Small helpers shared by the tests."""

import jax.numpy as jnp

from cpg_jax.numerics.scores import BlockedScores, DenseScores


def table(scores):
  """A dense `[M, batch, items]` array as a score table (tables pass through).

  The library builds a score table once, where the model's factors are turned
  into scores; tests that start from a score array wrap it here.
  """
  if isinstance(scores, (DenseScores, BlockedScores)):
    return scores
  return DenseScores(jnp.asarray(scores))


def metrics_records(workdir):
  """The records of `<workdir>/metrics.jsonl` as the JSON objects of its lines."""
  from cpg_jax.training import metrics_log  # pylint: disable=g-import-not-at-top
  return [record.to_json() for record in metrics_log.read_records(workdir)]
