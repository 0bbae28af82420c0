"""The typed, frozen description of one run, built once from its config.

`from_config` is the only reader of a ConfigDict on the training side: it
validates the config and copies every field into frozen dataclasses with
plain Python values. Everything downstream (the pipeline, the compiled step,
evaluation, the host loop) takes a `RunSpec`, so the signature of a compiled
function says what it depends on and a spec is hashable (a static argument).
"""

from __future__ import annotations

import dataclasses

import ml_collections

import kernels
from cpg_jax.numerics.late_stage import LateStageRanker
from cpg_jax.numerics.scores import ScoreTableSpec
from cpg_jax.training import config as config_lib


@dataclasses.dataclass(frozen=True)
class EnvironmentSpec:
  """The fixed world (`config.env.*`); see `cpg_jax.environments`."""

  name: str
  seed: int
  num_contexts: int
  num_items: int
  dim: int
  reward_scale: float
  shared_key: bool
  data_path: str
  noise_std: float
  clip_max: float
  fit_rank: int
  fit_l2: float
  fit_iterations: int
  fit_holdout: float
  cache_dir: str


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """The Optax optimiser and its learning-rate schedule."""

  name: str
  learning_rate: float
  schedule: str
  warmup_steps: int
  grad_clip_norm: float
  num_steps: int  # the schedule's horizon


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything one run needs to know, as static Python values.

  Attributes:
    estimator: registry name (`numerics.estimators.ESTIMATORS`).
    swr_combine: "sum" or "logsumexp" (ca_pg_swr with M > 1).
    exact_nodes, exact_tail: ca_pg_exact's quadrature nodes and count model.
    baseline, group_size, standardize_rewards: variance reduction
      (`numerics.baselines`); batch_size counts rollouts, group_size of
      them per context.
    num_candidates: K.
    num_models: M.
    lsr: the late-stage ranker (its `num_outputs` is L).
    position_weights: "mean", "sum" or "dcg".
    embedding_dim, tower_layers: the score model.
    scores: how a batch of scores is held (dense or item-blocked).
    env: the environment.
    optimizer: the optimiser.
    batch_size: contexts per gradient step.
    num_steps, eval_every, log_every, checkpoint_every, keep_checkpoints:
      the host loop's schedule.
    eval_contexts, eval_batch_size: evaluation.
    num_seeds, seed: the seeds trained together (seed .. seed + num_seeds - 1).
    mesh_seeds, mesh_items: the device mesh asked for (0: auto;
      `training.mesh.resolve` fits it to the devices).
    tensorboard: whether to write TensorBoard event files.
  """

  estimator: str
  swr_combine: str
  num_candidates: int
  num_models: int
  lsr: LateStageRanker
  position_weights: str
  embedding_dim: int
  tower_layers: tuple[int, ...]
  scores: ScoreTableSpec
  env: EnvironmentSpec
  optimizer: OptimizerSpec
  batch_size: int
  num_steps: int
  eval_every: int
  eval_contexts: int
  eval_batch_size: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  num_seeds: int
  seed: int
  mesh_seeds: int = 0
  mesh_items: int = 0
  tensorboard: bool = False
  exact_nodes: int = 32
  exact_tail: str = "series"
  baseline: str = "none"
  group_size: int = 1
  standardize_rewards: bool = False

  @property
  def num_outputs(self) -> int:
    """L."""
    return self.lsr.num_outputs

  @property
  def seeds(self) -> list[int]:
    return list(range(self.seed, self.seed + self.num_seeds))

  def check_catalogue(self, num_items: int) -> None:
    """Refuses K > N once the catalogue size is known (data environments)."""
    if self.num_candidates > num_items:
      raise config_lib.ConfigError(
          f"config.num_candidates (K={self.num_candidates}) must be <= the number of "
          f"items (N={num_items})")


TOP_K_KERNELS = ("xla", "auto", "pallas")


def fused_top_k(top_k_kernel: str) -> kernels.FusedTopK | None:
  """`config.top_k_kernel` as the blocked path's fused top-k: "xla" (the
  blocked scan, no kernel), "pallas" (the kernel; interpreted on CPU) or
  "auto" (the kernel on GPU/TPU, the scan on CPU)."""
  return None if top_k_kernel == "xla" else kernels.FusedTopK(top_k_kernel)


def from_config(config: ml_collections.ConfigDict) -> RunSpec:
  """Validates `config` and returns its `RunSpec`.

  Raises:
    config_lib.ConfigError: an impossible value (the message names the field).
  """
  config_lib.validate(config)
  c, e = config, config.env
  return RunSpec(
      estimator=c.estimator,
      swr_combine=c.swr_combine,
      num_candidates=int(c.num_candidates),
      num_models=int(c.num_models),
      lsr=LateStageRanker(name=c.lsr, num_outputs=int(c.num_outputs),
                          temperature=float(c.lsr_temperature),
                          epsilon=float(c.lsr_epsilon), alpha=float(c.lsr_alpha)),
      position_weights=c.position_weights,
      embedding_dim=int(c.embedding_dim),
      tower_layers=tuple(int(w) for w in c.tower_layers),
      scores=ScoreTableSpec(path=c.score_path, item_block_size=int(c.item_block_size),
                            dense_budget_mb=float(c.dense_budget_mb),
                            noise_generator=c.noise_generator,
                            fused_top_k=fused_top_k(c.top_k_kernel)),
      env=EnvironmentSpec(name=e.name, seed=int(e.seed), num_contexts=int(e.num_contexts),
                          num_items=int(e.num_items), dim=int(e.dim),
                          reward_scale=float(e.reward_scale), shared_key=bool(e.shared_key),
                          data_path=str(e.data_path), noise_std=float(e.noise_std),
                          clip_max=float(e.clip_max), fit_rank=int(e.fit_rank),
                          fit_l2=float(e.fit_l2), fit_iterations=int(e.fit_iterations),
                          fit_holdout=float(e.fit_holdout), cache_dir=str(e.cache_dir)),
      optimizer=OptimizerSpec(name=c.optimizer, learning_rate=float(c.learning_rate),
                              schedule=c.lr_schedule, warmup_steps=int(c.warmup_steps),
                              grad_clip_norm=float(c.grad_clip_norm),
                              num_steps=int(c.num_steps)),
      batch_size=int(c.batch_size),
      num_steps=int(c.num_steps),
      eval_every=int(c.eval_every),
      eval_contexts=int(c.eval_contexts),
      eval_batch_size=int(c.eval_batch_size),
      log_every=int(c.log_every),
      checkpoint_every=int(c.checkpoint_every),
      keep_checkpoints=int(c.keep_checkpoints),
      num_seeds=int(c.num_seeds),
      seed=int(c.seed),
      mesh_seeds=int(c.mesh.seeds),
      mesh_items=int(c.mesh.item_shards),
      tensorboard=bool(c.tensorboard),
      exact_nodes=int(c.exact_nodes),
      exact_tail=str(c.exact_tail),
      baseline=str(c.baseline),
      group_size=int(c.group_size),
      standardize_rewards=bool(c.standardize_rewards),
  )
