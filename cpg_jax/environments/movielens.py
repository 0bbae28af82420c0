"""Real-data environment: MovieLens-100K, its rating matrix completed by a low-rank fit.

MovieLens-100K (100,000 ratings, 1 to 5 stars, of 1,682 movies by 943 users;
6.3% of the pairs rated) comes inside the `recbole` wheel as
`recbole/dataset_example/ml-100k/ml-100k.inter`. Installing it fetches the
data only (RecBole's own heavy dependencies are not needed):

  pip install --no-deps recbole==1.2.1

The file is located without importing RecBole (which imports torch), and is
never copied into this repository (the MovieLens licence restricts
redistribution). A user-supplied file loads the same way: MovieLens's own
`u.data` or any RecBole `.inter` file with user, item and rating columns.

The environment (observed rewards as for KuaiRec, `reward_matrix.py`):

  contexts: the users, drawn uniformly
  Q       = the rating matrix completed by biased ALS, clipped to [1, 5]
  q(u, a) = Q[u, a] = E[r | u, a]
  r       = q(u, a) * (1 + eps),  eps ~ N(0, noise_std^2)   (noise_std = 0.3)

Completion (`fit_biased_als`): r_ui ~ mu + b_u + c_i + p_u . q_i, with the
global mean mu fixed, biases and rank-`rank` factors fitted by ridge-
regularised alternating least squares (L2 penalty `l2` on every bias and
factor), a fixed number of sweeps from factors drawn with a fixed seed; float64
NumPy, so the same file and parameters give the same matrix. The fit error is
measured before the matrix is used: a fixed fraction of the ratings (drawn with
the same seed) is held out, the model fitted on the rest, and RMSE / MAE taken
on the held-out ratings (predictions clipped to [1, 5]); then the model is
fitted again on all ratings, and that fit is the matrix Q. Measured on the
real file (10% held out, seed 0, 20 sweeps; RMSE / MAE):

  rank 0 (biases only), l2 10     0.957 / 0.762
  rank 3, l2 10                   0.926 / 0.733
  rank 5, l2 10   (the default)   0.917 / 0.724
  rank 8, l2 10                   0.919 / 0.724
  rank 10, l2 10                  0.922 / 0.725
  rank 20, l2 10                  0.934 / 0.736
  rank 5, l2 5 / 8 / 15 / 20      0.920 / 0.917 / 0.923 / 0.933 (RMSE)
  rank 5, l2 10, 10 / 40 sweeps   0.918 / 0.917 (RMSE)
  predicting the training mean    1.145

Rank 5 with l2 8-10 is best; another split (seeds 1, 2) moves the default's
RMSE to 0.911 / 0.898, so differences below about 0.01 are noise. The fit
(parse, two fits) takes about 3 s on one core.

The completed matrix is cached as an .npz file, keyed by the SHA-256 of the
data file's bytes and every fit parameter, in `$XDG_CACHE_HOME/cpg_jax` (or
`~/.cache/cpg_jax`; `cache_dir` overrides), so a second run loads it in about
0.02 s. `load_movielens_matrix` returns a `CompletionReport` (data, fit
error, cache) on every load, fitted or cached, and `make_movielens_environment`
(what `train.py` uses) logs its summary once, at INFO on the logger
`cpg_jax.environments.movielens`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import numbers
import os
import sys
import tempfile
import time
import warnings
import zipfile

import numpy as np

from cpg_jax.environments import reward_matrix
from cpg_jax.environments.errors import DataFileError

_logger = logging.getLogger(__name__)

RECBOLE_VERSION = '1.2.1'
INSTALL_COMMAND = f'pip install --no-deps recbole=={RECBOLE_VERSION}'
# Where the wheel puts the file, relative to the `recbole` package directory.
RECBOLE_DATA_FILE = ('dataset_example', 'ml-100k', 'ml-100k.inter')
RATING_RANGE = (1.0, 5.0)  # MovieLens stars.
INTER_COLUMNS = ('user_id', 'item_id', 'rating')  # RecBole's names (before ':type').
UDATA_COLUMNS = ('user', 'item', 'rating')  # u.data's first three fields.

# Defaults of the fit, also those of config.env.fit_* (justified in the module
# docstring by the held-out error).
DEFAULT_RANK = 5
DEFAULT_L2 = 10.0
DEFAULT_ITERATIONS = 20
DEFAULT_HOLDOUT = 0.1
_INIT_SCALE = 0.1  # std of the initial factors
# Bumped whenever the parse or the fit changes what a cached matrix holds.
_CACHE_FORMAT = 1

_MAX_EXACT_ID = 2**53  # ids are parsed as float64: exact up to here
_MAX_DENSE_PAIRS = 2**28  # users x items beyond this would not fit the dense fit


class MovieLensNotInstalledError(DataFileError):
  """The default data file is absent: `recbole` is not installed (or lacks it).

  Its message gives the install command and says that a user-supplied file
  (`config.env.data_path`) works too.
  """


# ------------------------------------------------------------ the data file --


def installed_movielens_path() -> str:
  """The path of `ml-100k.inter` inside the installed `recbole` package.

  `importlib.util.find_spec` on a top-level name only consults the import
  finders: RecBole's `__init__` (which imports torch) is not executed.

  Raises:
    MovieLensNotInstalledError: recbole is not installed, or its wheel has no
      such file.
  """
  relative = '/'.join(('recbole',) + RECBOLE_DATA_FILE)
  alternative = ('or pass your own MovieLens file with '
                 '--config.env.data_path=/path/to/u.data (MovieLens-100K\'s '
                 'u.data or a RecBole .inter file)')
  try:
    spec = importlib.util.find_spec('recbole')
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise MovieLensNotInstalledError(
        relative, f'not found: the Python package recbole is not installed for '
        f'{sys.executable}. Install the data with `{INSTALL_COMMAND}` (the data '
        f'only, without RecBole\'s dependencies), {alternative}.')
  for package_dir in spec.submodule_search_locations:
    path = os.path.join(package_dir, *RECBOLE_DATA_FILE)
    if os.path.isfile(path):
      return path
  try:
    version = importlib.metadata.version('recbole')
  except importlib.metadata.PackageNotFoundError:
    version = 'unknown'
  raise MovieLensNotInstalledError(
      os.path.join(list(spec.submodule_search_locations)[0], *RECBOLE_DATA_FILE),
      f'not found: the installed recbole (version {version}) does not ship '
      f'MovieLens-100K there. Install the version that does with '
      f'`{INSTALL_COMMAND}`, {alternative}.')


@dataclasses.dataclass(frozen=True)
class Ratings:
  """Explicit ratings read from a file, one per (user, item) pair.

  Attributes:
    users: int64 `[n]`, dense user index (row of the matrix) of each rating.
    items: int64 `[n]`, dense item index (column) of each rating.
    ratings: float64 `[n]`, the rating.
    user_ids: int64 `[num_users]`, the file's user id of each row, ascending.
    item_ids: int64 `[num_items]`, the file's item id of each column, ascending.
    file_format: 'u.data' or 'RecBole .inter'.
    num_lines: data lines read (ratings before duplicates were removed).
    num_duplicates: lines that repeated an earlier (user, item) pair.
  """

  users: np.ndarray
  items: np.ndarray
  ratings: np.ndarray
  user_ids: np.ndarray
  item_ids: np.ndarray
  file_format: str
  num_lines: int
  num_duplicates: int

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)


def _inter_columns(path: str, header: list[str]) -> tuple[int, int, int]:
  """Column indices of user_id, item_id and rating in a RecBole header."""
  names = [field.split(':', 1)[0].strip() for field in header]
  indices = []
  for name in INTER_COLUMNS:
    where = [i for i, n in enumerate(names) if n == name]
    if not where:
      raise DataFileError(
          path, f'missing required column {name!r} in the .inter header; '
          f'columns found: {header} (a RecBole .inter header names typed, '
          'tab-separated columns such as user_id:token item_id:token '
          'rating:float timestamp:float)')
    if len(where) > 1:
      raise DataFileError(
          path, f'column {name!r} appears {len(where)} times in the header '
          f'{header}')
    indices.append(where[0])
  return tuple(indices)


def _detect_format(path: str) -> tuple[str, int, tuple[int, int, int], tuple[str, ...]]:
  """(format, header lines to skip, column indices, column names) of a file.

  A first line with a ':' in a field is a RecBole typed header; a `.inter`
  file must have one. Anything else is read as headerless `u.data`.
  """
  first = reward_matrix.read_first_line(path)
  if not first.strip():
    raise DataFileError(path, 'is empty (the first line is blank)')
  fields = first.rstrip('\r\n').split('\t')
  if any(':' in field for field in fields):
    return 'RecBole .inter', 1, _inter_columns(path, fields), INTER_COLUMNS
  if os.path.splitext(path)[1].lower() == '.inter':
    raise DataFileError(
        path, f'a .inter file must start with a header of typed, tab-separated '
        f'column names such as user_id:token item_id:token rating:float '
        f'timestamp:float; the first line is {first.rstrip()[:80]!r}')
  return 'u.data', 0, (0, 1, 2), UDATA_COLUMNS


def _check_value(name: str, text: str, rating_range: tuple[float, float]) -> str | None:
  """The problem with one field's text, or None. Same rules as the fast path."""
  value, problem = reward_matrix.parse_finite(name, text)
  if problem:
    return problem
  if name == 'rating':
    low, high = rating_range
    if not low <= value <= high:
      return (f'rating {text!r} is outside the rating range [{low:g}, {high:g}] '
              '(MovieLens stars)')
    return None
  return reward_matrix.id_problem(name, text, value)


def _locate_problem(path: str, file_format: str, skip: int,
                    columns: tuple[int, int, int], names: tuple[str, ...],
                    rating_range: tuple[float, float]) -> None:
  """Line-by-line scan that raises at the first bad line (line 1 is the first).

  Only run after the vectorised parse failed or found a bad value, to name the
  line.
  """
  need = max(columns) + 1
  hint = ''
  if file_format == 'u.data':
    hint = (' (u.data has no header: each line is user, item, rating, '
            'timestamp, tab-separated; a RecBole .inter file starts with a '
            'header of typed column names such as user_id:token)')
  try:
    with open(path, encoding='utf-8-sig', newline='') as f:
      for line_number, line in enumerate(f, start=1):
        if line_number <= skip or not line.strip():
          continue  # the header; blank lines are skipped by the fast path too
        fields = line.rstrip('\r\n').split('\t')
        if len(fields) < need:
          raise DataFileError(
              path, f'line {line_number}: has {len(fields)} tab-separated '
              f'field(s), needs at least {need} to reach the '
              f'{", ".join(names)} columns{hint}')
        for name, col in zip(names, columns):
          problem = _check_value(name, fields[col].strip(), rating_range)
          if problem:
            raise DataFileError(
                path, f'line {line_number}: {problem}'
                + (hint if line_number == 1 else ''))
  except UnicodeDecodeError as err:
    raise DataFileError(path, f'is not UTF-8 text ({err})') from err


def _check_rating_range(rating_range) -> tuple[float, float]:
  try:
    low, high = (float(v) for v in rating_range)
  except (TypeError, ValueError):
    raise ValueError(f'rating_range must be a pair (low, high), got '
                     f'{rating_range!r}') from None
  if not (math.isfinite(low) and math.isfinite(high) and low < high):
    raise ValueError(f'rating_range must be finite with low < high, got '
                     f'{rating_range!r}')
  return low, high


def load_ratings(path: str | os.PathLike[str],
                 rating_range: tuple[float, float] = RATING_RANGE) -> Ratings:
  """Reads a MovieLens `u.data` or a RecBole `.inter` file.

  Formats, told apart by the first line (and the extension):
    - RecBole `.inter`: a header of tab-separated typed column names, e.g.
      `user_id:token	item_id:token	rating:float	timestamp:float`; the
      columns `user_id`, `item_id` and `rating` (names before the ':') are
      required, in any order; others are ignored. A `.inter` file without
      such a header is refused.
    - MovieLens `u.data`: no header; tab-separated user, item, rating,
      timestamp; the timestamp (and any further field) is ignored.
  Ids must be non-negative integers, ratings finite and within `rating_range`.
  Blank lines are skipped.

  Preprocessing:
    - user ids and item ids are mapped to dense indices 0.. in ascending order
      of the original id (MovieLens-100K's ids are 1..943 and 1..1682, so
      user id u is row u - 1);
    - a (user, item) pair that occurs on several lines keeps the rating of the
      LAST one; the number of such lines is logged (a WARNING when > 0, else
      DEBUG, as the completion report repeats the counts) and kept in
      `Ratings.num_duplicates`.

  Args:
    path: the file.
    rating_range: (low, high), the allowed ratings.
  Returns:
    `Ratings`.
  Raises:
    DataFileError: the file is missing, not a file, empty, not UTF-8, has a
      bad header, no data lines, a short line, or a bad value (the line is
      named), or too many users x items for a dense matrix.
    ValueError: rating_range is not a pair with low < high.
  """
  rating_range = _check_rating_range(rating_range)
  path = os.fspath(path)
  reward_matrix.check_data_file(path)
  file_format, skip, columns, names = _detect_format(path)
  with warnings.catch_warnings():
    # "input contained no data" is turned into a DataFileError below.
    warnings.simplefilter('ignore', UserWarning)
    try:
      data = np.loadtxt(path, dtype=np.float64, delimiter='\t', skiprows=skip,
                        usecols=columns, comments=None, quotechar=None, ndmin=2,
                        encoding='utf-8-sig')
    except ValueError as err:  # includes UnicodeDecodeError
      _locate_problem(path, file_format, skip, columns, names, rating_range)
      raise DataFileError(path, f'could not be parsed: {err}') from err
  if data.shape[0] == 0:
    raise DataFileError(path, 'has a header but no data lines' if skip
                        else 'has no data lines')

  user_col, item_col, rating = data[:, 0], data[:, 1], data[:, 2]
  ids_ok = all(np.all(np.isfinite(v) & (v >= 0) & (v == np.floor(v))
                      & (v <= _MAX_EXACT_ID)) for v in (user_col, item_col))
  low, high = rating_range
  if not ids_ok or not np.all(np.isfinite(rating) & (rating >= low) & (rating <= high)):
    _locate_problem(path, file_format, skip, columns, names, rating_range)
    raise DataFileError(path, 'has an invalid id or rating value')

  user_ids, users = np.unique(user_col.astype(np.int64), return_inverse=True)
  item_ids, items = np.unique(item_col.astype(np.int64), return_inverse=True)
  users, items = users.reshape(-1), items.reshape(-1)
  if len(user_ids) * len(item_ids) > _MAX_DENSE_PAIRS:
    raise DataFileError(
        path, f'has {len(user_ids)} users x {len(item_ids)} items; the dense '
        f'completed matrix supports at most {_MAX_DENSE_PAIRS} pairs')

  flat = users * len(item_ids) + items
  keep = reward_matrix.last_occurrences(flat)  # a repeated pair keeps its last line
  num_duplicates = len(flat) - len(keep)
  _logger.log(
      logging.WARNING if num_duplicates else logging.DEBUG,
      '%s (%s): %d data lines -> %d users x %d items, %d ratings; %d duplicated '
      '(user, item) lines (kept the last).', path, file_format, len(flat),
      len(user_ids), len(item_ids), len(keep), num_duplicates)
  return Ratings(users=users[keep], items=items[keep], ratings=rating[keep],
                 user_ids=user_ids, item_ids=item_ids, file_format=file_format,
                 num_lines=len(flat), num_duplicates=num_duplicates)


# ------------------------------------------------------------- completion --


@dataclasses.dataclass(frozen=True)
class LowRankFit:
  """r_ui ~ mean + user_bias[u] + item_bias[i] + user_factors[u] . item_factors[i].

  Attributes:
    mean: the global mean rating (of the ratings fitted).
    user_bias: float64 `[users]`.
    item_bias: float64 `[items]`.
    user_factors: float64 `[users, rank]`.
    item_factors: float64 `[items, rank]`.
  """

  mean: float
  user_bias: np.ndarray
  item_bias: np.ndarray
  user_factors: np.ndarray
  item_factors: np.ndarray

  def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Unclipped predictions. int `[n]`, int `[n]` -> float64 `[n]`."""
    return (self.mean + self.user_bias[users] + self.item_bias[items]
            + np.einsum('nk,nk->n', self.user_factors[users],
                        self.item_factors[items]))

  def predict_all(self) -> np.ndarray:
    """Unclipped predictions of every pair. float64 `[users, items]`."""
    return (self.mean + self.user_bias[:, None] + self.item_bias[None, :]
            + self.user_factors @ self.item_factors.T)


def _ridge_half_step(mask: np.ndarray, residual: np.ndarray,
                     features: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
  """Solves every row's bias and factors with the other side held fixed.

  For row u: min over (b_u, p_u) of
    sum_{i observed} (residual[u, i] - b_u - p_u . features[i])^2
    + l2 (b_u^2 + |p_u|^2).
  With z_i = [1, features[i]] this is (sum z_i z_i^T + l2 I) x_u = sum z_i
  residual[u, i]; the Gram sums of all rows are one matrix product.

  Args:
    mask: float64 `[rows, cols]`, 1 where a rating is fitted, else 0.
    residual: float64 `[rows, cols]`, the targets (any value where mask is 0).
    features: float64 `[cols, rank]`.
    l2: ridge penalty, > 0 (keeps every system positive definite, also for a
      row without ratings, whose solution is then 0).
  Returns:
    (bias `[rows]`, factors `[rows, rank]`).
  """
  z = np.concatenate([np.ones((features.shape[0], 1)), features], axis=1)
  width = z.shape[1]
  outer = (z[:, :, None] * z[:, None, :]).reshape(z.shape[0], width * width)
  gram = (mask @ outer).reshape(-1, width, width) + l2 * np.eye(width)
  rhs = (mask * residual) @ z
  solution = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
  return solution[:, 0], solution[:, 1:]


def _check_fit_parameters(rank, l2, iterations, seed) -> None:
  for name, value, low in (('rank', rank, 0), ('iterations', iterations, 1),
                           ('seed', seed, 0)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
      raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
  if (isinstance(l2, bool) or not isinstance(l2, numbers.Real)
      or not math.isfinite(l2) or l2 <= 0):
    raise ValueError(f'l2 must be a finite number > 0, got {l2!r}')


def _check_holdout(holdout) -> None:
  if (isinstance(holdout, bool) or not isinstance(holdout, numbers.Real)
      or not 0 < holdout < 1):
    raise ValueError(f'holdout must be a number in (0, 1), got {holdout!r}')


def fit_biased_als(users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                   num_users: int, num_items: int, rank: int = DEFAULT_RANK,
                   l2: float = DEFAULT_L2, iterations: int = DEFAULT_ITERATIONS,
                   seed: int = 0) -> LowRankFit:
  """Biased low-rank model by ridge-regularised alternating least squares.

  Model r_ui ~ mu + b_u + c_i + p_u . q_i with mu the mean of `ratings`
  (fixed); minimises the squared error on the given ratings plus
  l2 (|b|^2 + |c|^2 + |P|^2 + |Q|^2). Each of the `iterations` sweeps solves
  all users exactly given the items, then all items given the users, so the
  objective never increases. Initial factors ~ N(0, 0.1^2) drawn from
  `np.random.default_rng([seed, 2])`, biases 0. Deterministic: float64 NumPy.

  Memory and time are dense in users x items (a mask and a residual matrix of
  that size, matrix products with (rank + 1)^2 columns): MovieLens-100K takes
  about 0.05 s a sweep at rank 5.

  Args:
    users: int `[n]`, dense user index of each rating, in [0, num_users).
    items: int `[n]`, dense item index, in [0, num_items).
    ratings: float `[n]`.
    num_users, num_items: the matrix size.
    rank: factor dimension, >= 0 (0 fits the biases only).
    l2: ridge penalty, > 0.
    iterations: sweeps, >= 1.
    seed: initial-factor seed, >= 0.
  Returns:
    `LowRankFit`.
  """
  _check_fit_parameters(rank, l2, iterations, seed)
  users = np.asarray(users, np.int64)
  items = np.asarray(items, np.int64)
  ratings = np.asarray(ratings, np.float64)
  if len(ratings) == 0:
    raise ValueError('fit_biased_als needs at least one rating')
  mean = float(ratings.mean())
  mask = np.zeros((num_users, num_items))
  mask[users, items] = 1.0
  centred = np.zeros((num_users, num_items))
  centred[users, items] = ratings - mean
  rng = np.random.default_rng([seed, 2])
  user_factors = rng.normal(0.0, _INIT_SCALE, (num_users, rank))
  item_factors = rng.normal(0.0, _INIT_SCALE, (num_items, rank))
  user_bias, item_bias = np.zeros(num_users), np.zeros(num_items)
  mask_t = np.ascontiguousarray(mask.T)
  for _ in range(iterations):
    user_bias, user_factors = _ridge_half_step(
        mask, centred - item_bias[None, :], item_factors, l2)
    item_bias, item_factors = _ridge_half_step(
        mask_t, (centred - user_bias[:, None]).T, user_factors, l2)
  return LowRankFit(mean, user_bias, item_bias, user_factors, item_factors)


@dataclasses.dataclass(frozen=True)
class CompletionReport:
  """How a MovieLens matrix was read and completed, and how well.

  Attributes:
    path: the data file.
    sha256: hex SHA-256 of its bytes.
    file_format: 'u.data' or 'RecBole .inter'.
    num_lines, num_ratings, num_duplicates: data lines, distinct (user, item)
      ratings, lines that repeated a pair (the last was kept).
    num_users, num_items: the matrix shape.
    rank, l2, iterations, holdout, seed: the fit parameters.
    num_heldout: ratings held out to measure the fit.
    heldout_rmse, heldout_mae: the error on them of the model fitted on the
      others, predictions clipped to the rating range.
    mean_rmse: the held-out RMSE of predicting the mean training rating, for
      scale.
    rating_range: (low, high); Q is clipped to it.
    fit_seconds: time of parse + both fits when the matrix was computed.
    cache_path: the cache file ('' when caching is off or failed).
    from_cache: whether this load read the matrix from the cache.
    load_seconds: time of this load.
  """

  path: str
  sha256: str
  file_format: str
  num_lines: int
  num_ratings: int
  num_duplicates: int
  num_users: int
  num_items: int
  rank: int
  l2: float
  iterations: int
  holdout: float
  seed: int
  num_heldout: int
  heldout_rmse: float
  heldout_mae: float
  mean_rmse: float
  rating_range: tuple[float, float]
  fit_seconds: float
  cache_path: str = ''
  from_cache: bool = False
  load_seconds: float = 0.0

  def summary(self) -> str:
    """Two lines for the user: the data, then the fit and its error."""
    observed = self.num_ratings / (self.num_users * self.num_items)
    low, high = self.rating_range
    if self.from_cache:
      source = f'loaded from the cache {self.cache_path} in {self.load_seconds:.2f} s'
    else:
      source = f'fitted in {self.fit_seconds:.1f} s'
      source += f', cached at {self.cache_path}' if self.cache_path else ' (not cached)'
    return (
        f'MovieLens ratings {self.path} ({self.file_format}): {self.num_ratings} '
        f'ratings, {self.num_users} users x {self.num_items} items '
        f'({100 * observed:.1f}% observed), {self.num_duplicates} duplicated '
        f'lines (kept the last).\n'
        f'Completed by biased ALS (rank {self.rank}, l2 {self.l2:g}, '
        f'{self.iterations} sweeps, seed {self.seed}): held-out RMSE '
        f'{self.heldout_rmse:.4f}, MAE {self.heldout_mae:.4f} on '
        f'{self.num_heldout} ratings ({100 * self.holdout:g}% held out; '
        f'predicting the mean: RMSE {self.mean_rmse:.4f}); Q clipped to '
        f'[{low:g}, {high:g}]; {source}.')


def complete_ratings(ratings: Ratings, rank: int = DEFAULT_RANK,
                     l2: float = DEFAULT_L2, iterations: int = DEFAULT_ITERATIONS,
                     holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
                     rating_range: tuple[float, float] = RATING_RANGE,
                     path: str = '') -> tuple[np.ndarray, dict]:
  """Measures the fit on held-out ratings, then completes with all of them.

  round(holdout * n) ratings (at least 1) are drawn with
  `np.random.default_rng([seed, 1])` and held out; `fit_biased_als` on the
  rest gives the held-out RMSE / MAE; `fit_biased_als` on all ratings, clipped
  to `rating_range`, is the completed matrix.

  Args:
    ratings: from `load_ratings`.
    rank, l2, iterations, seed: as `fit_biased_als`.
    holdout: fraction held out, in (0, 1).
    rating_range: (low, high), the clip of the predictions.
    path: the file, for error messages.
  Returns:
    (Q float32 `[users, items]`, the report's measured fields as a dict).
  Raises:
    DataFileError: fewer than 2 ratings (one must be held out, one fitted).
    ValueError: a parameter is out of range.
  """
  _check_fit_parameters(rank, l2, iterations, seed)
  _check_holdout(holdout)
  low, high = _check_rating_range(rating_range)
  n = len(ratings.ratings)
  if n < 2:
    raise DataFileError(path, f'has {n} rating(s); at least 2 are needed (one '
                        'is held out to measure the fit)')
  num_heldout = min(max(1, int(round(holdout * n))), n - 1)
  order = np.random.default_rng([seed, 1]).permutation(n)
  test, train = order[:num_heldout], order[num_heldout:]
  u, i, r = ratings.users, ratings.items, ratings.ratings
  shape = (ratings.num_users, ratings.num_items)

  held_fit = fit_biased_als(u[train], i[train], r[train], *shape, rank=rank,
                            l2=l2, iterations=iterations, seed=seed)
  error = np.clip(held_fit.predict(u[test], i[test]), low, high) - r[test]
  full_fit = fit_biased_als(u, i, r, *shape, rank=rank, l2=l2,
                            iterations=iterations, seed=seed)
  matrix = np.clip(full_fit.predict_all(), low, high).astype(np.float32)
  measured = dict(
      num_heldout=int(num_heldout),
      heldout_rmse=float(np.sqrt(np.mean(error**2))),
      heldout_mae=float(np.mean(np.abs(error))),
      mean_rmse=float(np.sqrt(np.mean((r[train].mean() - r[test])**2))),
  )
  return matrix, measured


# ------------------------------------------------------------------ cache --


def default_cache_dir() -> str:
  """`$XDG_CACHE_HOME/cpg_jax`, or `~/.cache/cpg_jax` when that is unset."""
  base = os.environ.get('XDG_CACHE_HOME', '')
  if not os.path.isabs(base):  # the XDG spec: ignore a relative value
    base = os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'cpg_jax')


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _cache_key(sha256: str, parameters: dict) -> str:
  text = json.dumps({'format': _CACHE_FORMAT, 'sha256': sha256, **parameters},
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def _read_cache(cache_path: str, key: str, rating_range: tuple[float, float]):
  """(matrix, user_ids, item_ids, report fields) from a cache file, or None.

  Anything unexpected (unreadable, truncated, another key, wrong shapes or
  dtypes, values outside the rating range) is logged and treated as a miss.
  """
  if not os.path.exists(cache_path):
    return None
  try:
    with np.load(cache_path, allow_pickle=False) as npz:
      stored_key = str(npz['key'])
      matrix = npz['matrix']
      user_ids, item_ids = npz['user_ids'], npz['item_ids']
      fields = json.loads(str(npz['report']))
    problem = None
    if stored_key != key:
      problem = 'it was written for other data or parameters'
    elif (matrix.dtype != np.float32 or matrix.ndim != 2
          or matrix.shape != (len(user_ids), len(item_ids))
          or user_ids.dtype != np.int64 or item_ids.dtype != np.int64):
      problem = 'its arrays have unexpected shapes or types'
    elif not (np.isfinite(matrix).all() and matrix.min() >= rating_range[0]
              and matrix.max() <= rating_range[1]):
      problem = 'its matrix has values outside the rating range'
    elif not isinstance(fields, dict):
      problem = 'its report is not a dict'
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
          json.JSONDecodeError) as err:
    problem = f'it is unreadable ({type(err).__name__}: {err})'
  if problem:
    _logger.warning('Ignoring the MovieLens cache file %s: %s; recomputing.',
                    cache_path, problem)
    return None
  return matrix, user_ids, item_ids, fields


def _write_cache(cache_path: str, key: str, matrix: np.ndarray,
                 user_ids: np.ndarray, item_ids: np.ndarray, fields: dict) -> bool:
  """Writes the cache file atomically (temporary name, then rename).

  A failure (read-only or full disk) is logged and leaves no partial file.
  Returns whether the file was written.
  """
  directory = os.path.dirname(cache_path)
  temporary = None
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix='.tmp-movielens-',
                                     suffix='.npz', delete=False) as f:
      temporary = f.name
      np.savez(f, key=np.array(key), matrix=matrix, user_ids=user_ids,
               item_ids=item_ids, report=np.array(json.dumps(fields)))
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, cache_path)
    return True
  except OSError as err:
    _logger.warning('Could not write the MovieLens cache file %s (%s); the '
                    'matrix will be recomputed next time.', cache_path, err)
    if temporary and os.path.exists(temporary):
      os.unlink(temporary)
    return False


# ------------------------------------------------------------ entry points --


@dataclasses.dataclass(frozen=True)
class MovieLensMatrix:
  """A completed MovieLens rating matrix.

  Attributes:
    matrix: float32 `[users, items]`, Q, within the rating range.
    user_ids: int64 `[users]`, the file's user id of each row (ascending).
    item_ids: int64 `[items]`, the file's item id of each column (ascending).
    report: `CompletionReport`.
  """

  matrix: np.ndarray
  user_ids: np.ndarray
  item_ids: np.ndarray
  report: CompletionReport


def load_movielens_matrix(
    path: str | os.PathLike[str] = '',
    rank: int = DEFAULT_RANK,
    l2: float = DEFAULT_L2,
    iterations: int = DEFAULT_ITERATIONS,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = '',
    rating_range: tuple[float, float] = RATING_RANGE,
) -> MovieLensMatrix:
  """Reads MovieLens ratings and completes them into a dense matrix (cached).

  Args:
    path: a `u.data` or RecBole `.inter` file (see `load_ratings`); '' is the
      file installed by `pip install --no-deps recbole==1.2.1`.
    rank, l2, iterations, holdout, seed: the fit (see `complete_ratings`).
    cache_dir: where the completed matrix is cached; '' is
      `default_cache_dir()`, None turns the cache off.
    rating_range: (low, high) of the ratings; Q is clipped to it.
  Returns:
    `MovieLensMatrix`; its report is also logged (INFO) by
    `make_movielens_environment`.
  Raises:
    MovieLensNotInstalledError: path is '' and recbole is not installed.
    DataFileError: the file is missing or malformed (see `load_ratings`).
    ValueError: a fit parameter is out of range.
  """
  start = time.perf_counter()
  path = os.fspath(path) if path else installed_movielens_path()
  rating_range = _check_rating_range(rating_range)
  _check_fit_parameters(rank, l2, iterations, seed)
  _check_holdout(holdout)
  reward_matrix.check_data_file(path)
  parameters = dict(rank=int(rank), l2=float(l2), iterations=int(iterations),
                    holdout=float(holdout), seed=int(seed),
                    rating_range=list(rating_range))
  try:
    sha256 = _file_sha256(path)
  except OSError as err:
    raise DataFileError(path, f'could not be read ({err})') from err
  cache_path, key = '', _cache_key(sha256, parameters)
  if cache_dir is not None:
    directory = os.fspath(cache_dir) or default_cache_dir()
    cache_path = os.path.join(os.path.abspath(os.path.expanduser(directory)),
                              f'movielens-{key[:32]}.npz')
    cached = _read_cache(cache_path, key, rating_range)
    if cached is not None:
      matrix, user_ids, item_ids, fields = cached
      report = CompletionReport(
          path=path, sha256=sha256, rating_range=rating_range,
          cache_path=cache_path, from_cache=True,
          load_seconds=time.perf_counter() - start,
          **{k: v for k, v in fields.items() if k in _STORED_FIELDS})
      return MovieLensMatrix(matrix, user_ids, item_ids, report)

  ratings = load_ratings(path, rating_range)
  matrix, measured = complete_ratings(
      ratings, rank=rank, l2=l2, iterations=iterations, holdout=holdout,
      seed=seed, rating_range=rating_range, path=path)
  fields = dict(
      file_format=ratings.file_format, num_lines=ratings.num_lines,
      num_ratings=len(ratings.ratings), num_duplicates=ratings.num_duplicates,
      num_users=ratings.num_users, num_items=ratings.num_items,
      fit_seconds=time.perf_counter() - start, **parameters, **measured)
  fields.pop('rating_range')
  if cache_path and not _write_cache(cache_path, key, matrix, ratings.user_ids,
                                     ratings.item_ids, fields):
    cache_path = ''
  report = CompletionReport(path=path, sha256=sha256, rating_range=rating_range,
                            cache_path=cache_path, from_cache=False,
                            load_seconds=time.perf_counter() - start, **fields)
  return MovieLensMatrix(matrix, ratings.user_ids, ratings.item_ids, report)


# The report fields a cache file stores (the rest describe the current load).
_STORED_FIELDS = frozenset(
    f.name for f in dataclasses.fields(CompletionReport)) - {
        'path', 'sha256', 'rating_range', 'cache_path', 'from_cache',
        'load_seconds'}


def make_movielens_environment(
    path: str | os.PathLike[str] = '',
    noise_std: float = 0.3,
    rank: int = DEFAULT_RANK,
    l2: float = DEFAULT_L2,
    iterations: int = DEFAULT_ITERATIONS,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = '',
) -> reward_matrix.RewardMatrixEnvironment:
  """MovieLens as an environment: Q from `load_movielens_matrix`, r = q (1 + eps).

  Logs the completion report (data, held-out error, cache) at INFO on the
  logger `cpg_jax.environments.movielens`, once per call.

  Args:
    path: '' for the file installed by recbole, else a u.data / .inter file.
    noise_std: std of the multiplicative reward noise, finite, >= 0.
    rank, l2, iterations, holdout, seed, cache_dir: as `load_movielens_matrix`.
  Returns:
    A `RewardMatrixEnvironment` of users x items.
  """
  noise_std = reward_matrix.check_noise_std(noise_std)
  completed = load_movielens_matrix(
      path, rank=rank, l2=l2, iterations=iterations, holdout=holdout, seed=seed,
      cache_dir=cache_dir)
  _logger.info('%s', completed.report.summary())
  return reward_matrix.make_reward_matrix_environment(
      completed.matrix, noise_std=noise_std)
