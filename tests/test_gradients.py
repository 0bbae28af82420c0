"""The gradient study: its sampled moments against exact enumeration."""

import numpy as np
import pytest

from cpg_jax.experiments import gradients
from cpg_jax.training import config as config_lib


def tiny_config(**overrides):
  return config_lib.apply_overrides(config_lib.default_config(), {
      "env.num_contexts": 3, "env.num_items": 5, "num_candidates": 2, "batch_size": 4,
      "embedding_dim": 3, "num_seeds": 1, **overrides})


@pytest.mark.parametrize("estimator, lsr", [
    ("vpg", "optimal"), pytest.param("ca_pg_exact", "optimal", marks=pytest.mark.slow),
    ("ca_pg_ss", "uniform")])
def test_sampled_variance_matches_exact_enumeration(estimator, lsr):
  """tr Cov of 4,000 sampled batch estimates within 8% of the exact value
  (a sample variance's relative standard error here is ~2-3%); the sampled
  mean within 4 standard errors of the exact mean."""
  config = gradients.point_config(tiny_config(lsr=lsr), estimator, 2)
  pipeline, env = gradients.build(config)
  assert gradients.can_enumerate(pipeline.spec, env.num_items)
  import jax  # pylint: disable=g-import-not-at-top
  params = gradients.init_params(pipeline, 0)
  exact = gradients.exact_moments(pipeline, env, params)
  draws = 4000
  estimates = gradients.sample_estimates(pipeline, env, params, jax.random.key(1), draws)
  stats = gradients.summarise(estimates, exact["mean"])
  assert abs(stats["trace_cov"] / exact["trace_cov"] - 1.0) < 0.08, (
      stats["trace_cov"], exact["trace_cov"])
  per_coordinate_se = estimates.std(axis=0, ddof=1) / np.sqrt(draws)
  z = np.abs(estimates.mean(axis=0) - exact["mean"]) / np.maximum(per_coordinate_se, 1e-12)
  assert z.max() < 4.5, z.max()
  if estimator == "vpg":  # V-PG is unbiased: its exact mean is the true gradient.
    np.testing.assert_allclose(exact["mean"], exact["true"], rtol=1e-4,
                               atol=1e-6 * np.abs(exact["true"]).max())


def test_ca_pg_exact_is_biased_at_l_below_k_and_study_reports_it(tmp_path):
  """The study's rows: V-PG's bias is within its noise, CA-PG-exact's is not
  (optimal LSR, L = 1 < K: a biased but lower-variance estimator)."""
  rows = gradients.run_study(tiny_config(), ["vpg", "ca_pg_exact"], [2], draws=1000,
                             reference_draws=2, log=lambda _: None)
  by_name = {r["estimator"]: r for r in rows}
  assert by_name["vpg"]["reference"] == "exact (enumeration)"
  assert by_name["vpg"]["bias"] < 4 * by_name["vpg"]["bias_se"]
  assert by_name["ca_pg_exact"]["bias"] > 4 * by_name["ca_pg_exact"]["bias_se"]
  assert by_name["ca_pg_exact"]["trace_cov"] < by_name["vpg"]["trace_cov"]
  table = gradients.markdown_table(rows)
  assert "CA-PG-exact" in table and table.count("\n") == 4
  gradients.plot(rows, str(tmp_path / "g.png"), "tiny")
  assert (tmp_path / "g.png").stat().st_size > 1000


def test_study_starts_from_a_checkpoint_of_a_run(tmp_path):
  """--checkpoint: the parameter point is seed 0 of the run's newest
  checkpoint (not the initialisation), and a workdir without one is refused."""
  import jax  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_seeds=2, num_steps=30, eval_every=30, log_every=30,
                       checkpoint_every=30, eval_contexts=3, eval_batch_size=3)
  states = loop.train_and_evaluate(config, str(tmp_path / "run"), log=lambda _: None)
  pipeline, _ = gradients.build(gradients.point_config(config, "vpg", 2))
  restored = gradients.init_params(pipeline, 0, checkpoint=str(tmp_path / "run"))
  trained = jax.tree.map(lambda x: x[0], states.params)
  initial = gradients.init_params(pipeline, 0)
  for got, want, start in zip(jax.tree.leaves(restored), jax.tree.leaves(trained),
                              jax.tree.leaves(initial), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.array_equal(np.asarray(got), np.asarray(start))
  rows = gradients.run_study(config, ["vpg"], [2], draws=50, reference_draws=2, seed=0,
                             checkpoint=str(tmp_path / "run"), log=lambda _: None)
  assert rows[0]["reference"] == "exact (enumeration)" and np.isfinite(rows[0]["trace_cov"])
  with pytest.raises(gradients.StudyError, match="no checkpoint"):
    gradients.init_params(pipeline, 0, checkpoint=str(tmp_path / "empty"))
