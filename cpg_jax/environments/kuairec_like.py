"""A generated stand-in for KuaiRec's small_matrix.csv (same format, shape, range).

  python -m cpg_jax.environments.kuairec_like --out /tmp/kuairec_like.csv \
      [--users 1411] [--videos 3327] [--seed 0]

Experiment (d) needs the user's copy of KuaiRec; this writes a file that the
same loader and sweep accept, so the pipeline can be run end to end (and its
cost measured) without it. It is NOT the real data: results on it say nothing
about KuaiRec itself.

What the file holds:
  - the real file's header and column order
    (user_id,video_id,play_duration,video_duration,time,date,timestamp,
    watch_ratio) and its shape by default: 1,411 users x 3,327 videos, 99.6%
    of the pairs observed (every user and every video at least once);
  - original ids drawn without replacement from the real id ranges, so they
    are neither contiguous nor sorted; lines in a scrambled order;
  - watch_ratio = exp(mu + low-rank affinity + user bias + video bias + noise),
    i.e. log-normal with a user x video structure a two-tower model can learn;
    median about 0.75, a long upper tail with a few values above the loader's
    clip at 10, and 2% exact zeros (skipped videos). These are chosen to
    resemble the real range, not fitted to it;
  - no duplicated (user, video) pairs.
The output is a pure function of (users, videos, seed).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

HEADER = ('user_id,video_id,play_duration,video_duration,time,date,timestamp,'
          'watch_ratio')
KUAIREC_USERS = 1411
KUAIREC_VIDEOS = 3327
OBSERVED_FRACTION = 0.996
ZERO_FRACTION = 0.02
AFFINITY_RANK = 8
LOG_MEDIAN = np.log(0.75)
# Scales of the parts of log(watch_ratio); their total std is about 0.8.
AFFINITY_STD, USER_STD, VIDEO_STD, NOISE_STD = 0.5, 0.3, 0.4, 0.4
START_UNIX_S = 1593907200  # 2020-07-05 00:00:00 UTC, the real log's first day.
SPAN_S = 60 * 86_400
REAL_MAX_USER_ID, REAL_MAX_VIDEO_ID = 7176, 10728


def _original_ids(rng: np.random.Generator, count: int,
                  max_id: int) -> np.ndarray:
  """`count` distinct ids in 1..max_id, unsorted (1..count if it exceeds)."""
  if count > max_id:
    return np.arange(1, count + 1)
  return rng.choice(np.arange(1, max_id + 1), count, replace=False)


def scrambled_observed_pairs(rng: np.random.Generator, users: int, videos: int,
                             fraction: float) -> np.ndarray:
  """Observed (user, video) index pairs in a random order. Returns int `[pairs, 2]`.

  Each pair is observed with probability `fraction`; one random video per user
  and one random user per video are forced in, so nobody is missing.
  """
  observed = rng.random((users, videos)) < fraction
  observed[np.arange(users), rng.integers(0, videos, users)] = True
  observed[rng.integers(0, users, videos), np.arange(videos)] = True
  pairs = np.argwhere(observed)
  return pairs[rng.permutation(len(pairs))]


def generate_arrays(users: int = KUAIREC_USERS, videos: int = KUAIREC_VIDEOS,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """The file's columns, one entry per line, in file order.

  Returns:
    dict with int64 `[lines]` arrays 'user_id', 'video_id', 'play_duration',
    'video_duration', 'timestamp_ms' and float64 `[lines]` 'watch_ratio'
    (rounded to 4 decimals, as written).
  """
  if users < 1 or videos < 1:
    raise ValueError(f'users and videos must be >= 1, got {users}, {videos}')
  rng = np.random.default_rng(seed)
  user_ids = _original_ids(rng, users, REAL_MAX_USER_ID)
  video_ids = _original_ids(rng, videos, REAL_MAX_VIDEO_ID)
  video_duration = rng.integers(3_000, 60_000, videos)

  pairs = scrambled_observed_pairs(rng, users, videos, OBSERVED_FRACTION)
  u, v = pairs[:, 0], pairs[:, 1]

  user_factors = rng.normal(size=(users, AFFINITY_RANK))
  video_factors = rng.normal(size=(videos, AFFINITY_RANK))
  affinity = np.einsum('nd,nd->n', user_factors[u], video_factors[v])
  log_ratio = (LOG_MEDIAN
               + AFFINITY_STD * affinity / np.sqrt(AFFINITY_RANK)
               + USER_STD * rng.normal(size=users)[u]
               + VIDEO_STD * rng.normal(size=videos)[v]
               + NOISE_STD * rng.normal(size=len(pairs)))
  ratio = np.round(np.exp(log_ratio), 4)
  ratio[rng.random(len(pairs)) < ZERO_FRACTION] = 0.0

  timestamp_ms = START_UNIX_S * 1000 + np.sort(
      rng.integers(0, SPAN_S * 1000, len(pairs)))
  return {
      'user_id': user_ids[u].astype(np.int64),
      'video_id': video_ids[v].astype(np.int64),
      'play_duration': np.round(ratio * video_duration[v]).astype(np.int64),
      'video_duration': video_duration[v].astype(np.int64),
      'timestamp_ms': timestamp_ms.astype(np.int64),
      'watch_ratio': ratio,
  }


def write_csv(path: str, columns: dict[str, np.ndarray],
              lines_per_chunk: int = 200_000) -> int:
  """Writes the columns as KuaiRec CSV (atomically). Returns the line count."""
  ms = columns['timestamp_ms']
  instants = ms.astype('datetime64[ms]')
  times = np.datetime_as_string(instants, unit='ms')  # 2020-07-05T00:11:48.053
  days = np.datetime_as_string(instants, unit='D')  # 2020-07-05
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    f.write(HEADER + '\n')
    for start in range(0, len(ms), lines_per_chunk):
      stop = start + lines_per_chunk
      rows = zip(columns['user_id'][start:stop].tolist(),
                 columns['video_id'][start:stop].tolist(),
                 columns['play_duration'][start:stop].tolist(),
                 columns['video_duration'][start:stop].tolist(),
                 times[start:stop].tolist(), days[start:stop].tolist(),
                 ms[start:stop].tolist(),
                 columns['watch_ratio'][start:stop].tolist())
      f.write(''.join(
          f'{a},{b},{c},{d},{t.replace("T", " ")},{day.replace("-", "")},'
          f'{m // 1000}.{m % 1000:03d},{r:.4f}\n'
          for a, b, c, d, t, day, m, r in rows))
  os.replace(tmp, path)  # never leave a half-written file under the name
  return len(ms)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='CSV file to write')
  parser.add_argument('--users', type=int, default=KUAIREC_USERS)
  parser.add_argument('--videos', type=int, default=KUAIREC_VIDEOS)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  columns = generate_arrays(args.users, args.videos, args.seed)
  lines = write_csv(args.out, columns)
  ratio = columns['watch_ratio']
  print(f'wrote {args.out}: {args.users} users x {args.videos} videos, '
        f'{lines:,} lines; watch_ratio median {np.median(ratio):.3f}, '
        f'mean {ratio.mean():.3f}, max {ratio.max():.2f}, '
        f'{(ratio > 10).mean():.4%} above 10, {(ratio == 0).mean():.2%} zero')


if __name__ == '__main__':
  main()
