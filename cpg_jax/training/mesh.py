"""The device mesh of a run: seeds and the item catalogue across devices.

A mesh has two axes (`config.mesh.seeds` x `config.mesh.item_shards` devices):

  seeds   independent runs; the seed axis of the `TrainState` is cut over
          it, and seeds never communicate
  items   the catalogue; every per-item table (the item towers' embeddings
          and their optimiser moments, the environment's item leaves) is
          padded to a multiple of the axis and cut over it (numerics.sharding)

The whole chunk of steps (and the evaluation) runs inside one `jax.shard_map`
over both axes, each device with its local seeds (vmapped) and its rows of
the catalogue. With one device (a 1 x 1 mesh) nothing is sharded and the
plain single-device program runs. Several hosts see one global mesh of all
their devices (`training.distributed`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cpg_jax.numerics import estimators
from cpg_jax.numerics.sharding import ItemShards
from cpg_jax.training.config import ConfigError

SEED_AXIS = "seeds"
ITEM_AXIS = "items"


@dataclasses.dataclass(frozen=True)
class MeshShape:
  """Devices on the seed axis x devices on the item axis."""

  seeds: int
  items: int

  @property
  def num_devices(self) -> int:
    return self.seeds * self.items

  @property
  def is_single_device(self) -> bool:
    return self.num_devices == 1

  def item_shards(self, num_items: int) -> ItemShards | None:
    """How the catalogue is cut (None when the item axis has one device)."""
    return None if self.items == 1 else ItemShards(ITEM_AXIS, self.items, num_items)


def _fits(num_devices: int, num_seeds: int) -> str:
  shapes = [f"{s} x {num_devices // s}" for s in range(1, num_devices + 1)
            if num_devices % s == 0 and num_seeds % s == 0]
  return ("meshes that fit (seeds x items): " + ", ".join(shapes) + "; or 0 for auto on "
          "either axis")


def resolve(seeds: int, items: int, num_devices: int, num_seeds: int) -> MeshShape:
  """The mesh shape from `config.mesh.{seeds,items}` (0 = auto).

  Auto: with both axes 0, as many devices on the seed axis as divide both the
  device count and `num_seeds` (all of them when `num_seeds` allows), the rest
  on the item axis; with one axis given, the other takes what is left.

  Raises:
    ConfigError: the product is not the device count, or `num_seeds` does not
      divide evenly over the seed axis (the message lists what would fit).
  """
  for name, value in (("mesh.seeds", seeds), ("mesh.item_shards", items)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ConfigError(f"config.{name} must be an integer >= 0 (0: auto), got {value!r}")
  if seeds == 0 and items == 0:
    seeds = math.gcd(num_devices, num_seeds)
    items = num_devices // seeds
  elif seeds == 0:
    if num_devices % items:
      raise ConfigError(f"config.mesh.item_shards={items} does not divide the "
                        f"{num_devices} devices; {_fits(num_devices, num_seeds)}")
    seeds = num_devices // items
  elif items == 0:
    if num_devices % seeds:
      raise ConfigError(f"config.mesh.seeds={seeds} does not divide the {num_devices} "
                        f"devices; {_fits(num_devices, num_seeds)}")
    items = num_devices // seeds
  if seeds * items != num_devices:
    raise ConfigError(
        f"config.mesh is {seeds} x {items} = {seeds * items} devices, but this run has "
        f"{num_devices}; {_fits(num_devices, num_seeds)}")
  if num_seeds % seeds:
    raise ConfigError(
        f"config.num_seeds={num_seeds} does not divide evenly over config.mesh.seeds="
        f"{seeds}; {_fits(num_devices, num_seeds)}")
  return MeshShape(seeds, items)


# Estimators whose loss is built from the score table's sharded operations
# (log-sum-exp, top-k, gathers) and so run on an item-sharded mesh.
ITEM_SHARDED_ESTIMATORS = frozenset(estimators.ESTIMATORS) - frozenset(
    estimators.SINGLE_MODEL_ESTIMATORS)


def check_supported(item_shards: int, estimator: str, noise_generator: str,
                    top_k_kernel: str) -> None:
  """Refuses, before compiling, what an item-sharded mesh does not run.

  Raises:
    ConfigError: with more than one device on the item axis
      (`item_shards`), Threefry noise (its draws depend on the shape of the
      whole matrix, not on the item id), the fused Pallas top-k (it scans
      the whole catalogue in one kernel), or an estimator outside
      ITEM_SHARDED_ESTIMATORS.
  """
  if item_shards == 1:
    return
  where = (f"the item axis of the mesh has {item_shards} devices "
           "(config.mesh.item_shards; set it to 1 to keep the catalogue on each device)")
  if noise_generator != "hash":
    raise ConfigError(f"config.noise_generator={noise_generator!r} cannot be sharded: "
                      f"{where}; use noise_generator='hash' (the same draw on any mesh)")
  if top_k_kernel != "xla":
    raise ConfigError(f"config.top_k_kernel={top_k_kernel!r} runs on one device: {where}; "
                      "use top_k_kernel='xla'")
  if estimator not in ITEM_SHARDED_ESTIMATORS:
    raise ConfigError(f"config.estimator={estimator!r} does not support an item-sharded "
                      f"catalogue: {where}; estimators that do: "
                      f"{', '.join(sorted(ITEM_SHARDED_ESTIMATORS))}")


def build(shape: MeshShape) -> jax.sharding.Mesh:
  """The mesh over all (global) devices, seeds major."""
  return jax.make_mesh((shape.seeds, shape.items), (SEED_AXIS, ITEM_AXIS),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=jax.devices())


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def is_item_leaf(path) -> bool:
  """Whether a `TrainState` leaf is indexed by item id: an item tower's
  embedding table, or an optimiser moment that mirrors it."""
  names = _path_names(path)
  return any(n.startswith("item_tower_") for n in names) and names[-1] == "embedding"


def state_specs(states, item_sharded: bool):
  """PartitionSpecs of a batched `TrainState` (leading seed axis; item
  leaves also on the item axis when `item_sharded`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (P(SEED_AXIS, ITEM_AXIS) if item_sharded and is_item_leaf(path)
                       else P(SEED_AXIS)), states)


def env_specs(env, item_sharded: bool):
  """PartitionSpecs of an environment: its item leaves cut on their item axis
  when `item_sharded`, everything else replicated."""
  def spec(path, x):
    axis = type(env).ITEM_AXES.get(_path_names(path)[-1]) if path else None
    if axis is None or not item_sharded:
      return P()
    return P(*([None] * axis), ITEM_AXIS)
  return jax.tree_util.tree_map_with_path(spec, env)


def _pad_axis(x, axis: int, size: int):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad) if size != x.shape[axis] else x


def pad_states(states, padded_items: int):
  """Item leaves padded with zero rows to `padded_items` (axis 1, after seeds)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: _pad_axis(x, 1, padded_items) if is_item_leaf(path) else x, states)


def unpad_states(states, num_items: int):
  """The item leaves cut back to the catalogue's `num_items` rows (host arrays)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x[:, :num_items] if is_item_leaf(path) else x, states)


def pad_env(env, padded_items: int):
  """The environment with its item leaves padded with zeros to `padded_items`."""
  return env.replace(**{name: _pad_axis(getattr(env, name), axis, padded_items)
                        for name, axis in type(env).ITEM_AXES.items()})


def put(tree, mesh: jax.sharding.Mesh, specs):
  """Host (or single-device) arrays as global arrays with these specs; every
  process passes the same full values and keeps its own shards."""
  def one(x, spec):
    x = np.asarray(x)
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index],
                                        dtype=x.dtype)
  return jax.tree.map(one, tree, specs)


def place_env(env, mesh: jax.sharding.Mesh, shards: ItemShards | None):
  """The environment on the mesh: item leaves padded and cut over the item
  axis (it then carries `shards`), the rest replicated."""
  if shards is not None:
    env = pad_env(env, shards.padded_size).replace(item_shards=shards)
  return put(env, mesh, env_specs(env, shards is not None))


def place_states(states, mesh: jax.sharding.Mesh, shards: ItemShards | None):
  """Batched `TrainState`s (host or one device, whole catalogue) on the mesh:
  the seed axis cut over `seeds`, item leaves padded and cut over `items`."""
  if shards is not None:
    states = pad_states(states, shards.padded_size)
  return put(states, mesh, state_specs(states, shards is not None))
