"""The embedded offline dataset: MovieLens-shaped ratings generated from planted latent factors.

The point is a dataset a model can learn and a test can check it learned: every rating comes
from a known score

    latent(u, i) = user_factors[u] . item_factors[i] + user_bias[u] + item_bias[i]
                   + mean over the item's genres of (age_group x genre + gender x genre affinity)
    rating       = 1..5 by cutting latent + N(0, NOISE_SD) at calibrated thresholds

and which items a user rates depends on their preference too: each user's items are drawn
without replacement with probability proportional to exp(PREFERENCE_WEIGHT * latent) x a Zipf
popularity, so a personalised retrieval model has something to beat most-popular with.
``true_scores`` recomputes ``latent`` for any (user, item) pair, for tests.

Generation is chunked by ranges of users, each chunk with its own RNG derived from
(seed, chunk index) and written as one parquet row group, so 10^8 ratings never sit in memory.
The output depends on the whole ``SyntheticConfig`` (chunk_rows included) and on
``GENERATOR_VERSION``; ``config_checksum`` hashes exactly those.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress

from recflow.config import SyntheticConfig
from recflow.vocabulary import ITEM_ID, RATING, TIMESTAMP, USER_ID
from tasks.normalize import (
    INTERACTIONS_FILE,
    INTERACTIONS_SCHEMA,
    ITEMS_FILE,
    ITEMS_SCHEMA,
    USERS_FILE,
    USERS_SCHEMA,
    NormalizeReport,
    movielens_items,
    movielens_users,
    write_table,
)

log = logging.getLogger(__name__)

# Bump whenever a change below alters the generated data: it invalidates cached outputs.
GENERATOR_VERSION = 1

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)  # fmt: skip
AGE_GROUP_EDGES = (25, 35, 50)  # under 25, 25-34, 35-49, 50+: the groups genre tastes vary by

# The planted model. Factors are scaled so user.item has variance 1 whatever n_factors is.
USER_BIAS_SD = 0.4
ITEM_BIAS_SD = 0.5
AGE_GENRE_SD = 0.8
GENDER_GENRE_SD = 0.6
NOISE_SD = 0.6
PREFERENCE_WEIGHT = 1.5  # how strongly preference (vs popularity) decides what gets rated
ZIPF_EXPONENT = 0.8
# Target share of ratings <= 1, 2, 3, 4 stars: 48% of ratings are 4 or 5, as in MovieLens.
RATING_CDF = (0.07, 0.19, 0.52, 0.82)
CALIBRATION_USERS = 2_000

# Ratings per user: log-normal activity, clipped to [MIN, min(n_items, MAX)].
MIN_RATINGS_PER_USER = 5
MAX_RATINGS_PER_USER = 1_000
ACTIVITY_SIGMA = 0.8

# Two years of ratings from 2015-01-01 UTC.
START_TIMESTAMP = 1_420_070_400
WINDOW_SECONDS = 2 * 365 * 86_400

# Scores are computed for blocks of users x all items; this bounds a block's size (elements).
SCORE_BLOCK_ELEMENTS = 1 << 22

# Independent random streams: the world (items, tastes, activity), calibration, each chunk.
_WORLD, _CALIBRATION, _CHUNK = 0, 1, 2


def config_checksum(config: SyntheticConfig) -> str:
    """sha256 of everything the generated data depends on."""
    payload = {"generator_version": GENERATOR_VERSION, **config.model_dump()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def dataset_name(config: SyntheticConfig) -> str:
    return f"synthetic-{config_checksum(config)[:12]}"


def generate(config: SyntheticConfig, out_dir: Path) -> NormalizeReport:
    """Write the canonical tables for ``config`` into ``out_dir`` (a staging directory)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = _World.build(config)
    write_table(movielens_items(world.items_frame()), ITEMS_SCHEMA, out_dir / ITEMS_FILE)
    with (
        pq.ParquetWriter(out_dir / INTERACTIONS_FILE, INTERACTIONS_SCHEMA) as ratings_out,
        pq.ParquetWriter(out_dir / USERS_FILE, USERS_SCHEMA) as users_out,
        Progress(transient=True) as progress,
    ):
        bar = progress.add_task("generating synthetic ratings", total=config.n_ratings)
        for chunk, lo, hi in world.chunks():
            rng = _rng(config.seed, _CHUNK, chunk)
            users = _Users.draw(rng, np.arange(lo, hi), world)
            users_out.write_table(users.table())
            ratings = _rate(rng, users, world.counts[lo:hi], world)
            ratings_out.write_table(ratings, row_group_size=max(1, ratings.num_rows))
            progress.advance(bar, ratings.num_rows)
    log.info(
        "synthetic: %d ratings of %d users on %d items (seed %d)",
        config.n_ratings,
        config.n_users,
        config.n_items,
        config.seed,
    )
    return NormalizeReport(
        n_interactions=config.n_ratings,
        n_users=config.n_users,
        n_items=config.n_items,
        has_users=True,
        has_tags=False,
    )


def true_scores(config: SyntheticConfig, user_ids, item_ids) -> np.ndarray:
    """The planted noise-free score of each (user_id, item_id) pair, ids as in the tables."""
    world = _World.build(config)
    factors = np.empty((config.n_users, config.n_factors))
    bias = np.empty(config.n_users)
    taste = np.empty((config.n_users, len(GENRES)))
    for chunk, lo, hi in world.chunks():
        # A chunk draws its users first, so replaying that draw recovers them exactly.
        users = _Users.draw(_rng(config.seed, _CHUNK, chunk), np.arange(lo, hi), world)
        factors[lo:hi], bias[lo:hi], taste[lo:hi] = users.factors, users.bias, users.taste
    u = np.asarray(user_ids, dtype=np.int64) - 1
    i = np.asarray(item_ids, dtype=np.int64) - 1
    return (
        np.einsum("nk,nk->n", factors[u], world.item_factors[i])
        + bias[u]
        + world.item_bias[i]
        + np.einsum("ng,ng->n", taste[u], world.item_genres[i])
    )


# ---------------------------------------------------------------------------------------------


def _f32(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32)


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    # SeedSequence wants non-negative entropy; two's complement keeps negative seeds distinct.
    return np.random.default_rng([seed & (2**64 - 1), stream, index])


@dataclass(frozen=True)
class _World:
    """Everything shared by all users: items, genre tastes, per-user activity, rating cuts."""

    config: SyntheticConfig
    item_factors: np.ndarray  # (n_items, n_factors)
    item_bias: np.ndarray
    item_genres: np.ndarray  # (n_items, n_genres), each row sums to 1 over the item's genres
    item_years: np.ndarray
    item_log_popularity: np.ndarray
    age_genre: np.ndarray  # (n_age_groups, n_genres)
    gender_genre: np.ndarray  # (2, n_genres)
    counts: np.ndarray  # ratings per user
    cuts: np.ndarray  # the 4 thresholds between 1..5 stars

    @classmethod
    def build(cls, config: SyntheticConfig) -> _World:
        rng = _rng(config.seed, _WORLD)
        n_items, n_genres = config.n_items, len(GENRES)
        scale = config.n_factors**-0.25
        # 1-3 genres per item, common genres (a Dirichlet draw) more often.
        genre_weight = np.log(rng.dirichlet(np.full(n_genres, 2.0)))
        keys = genre_weight + rng.gumbel(size=(n_items, n_genres))
        n_genres_of = rng.choice([1, 2, 3], size=n_items, p=[0.5, 0.35, 0.15])
        ranks = np.argsort(np.argsort(-keys, axis=1), axis=1)
        member = ranks < n_genres_of[:, None]
        world = cls(
            config=config,
            item_factors=_f32(rng.normal(0.0, scale, (n_items, config.n_factors))),
            item_bias=_f32(rng.normal(0.0, ITEM_BIAS_SD, n_items)),
            item_genres=_f32(member / member.sum(axis=1, keepdims=True)),
            item_years=np.maximum(2019 - rng.exponential(15.0, n_items).astype(int), 1930),
            item_log_popularity=_f32(-ZIPF_EXPONENT * np.log1p(rng.permutation(n_items))),
            age_genre=rng.normal(0.0, AGE_GENRE_SD, (len(AGE_GROUP_EDGES) + 1, n_genres)),
            gender_genre=rng.normal(0.0, GENDER_GENRE_SD, (2, n_genres)),
            counts=_allocate(rng, config),
            cuts=np.zeros(len(RATING_CDF)),
        )
        return world._calibrated()

    def _calibrated(self) -> _World:
        """Set the star thresholds so ratings follow RATING_CDF whatever the sizes."""
        rng = _rng(self.config.seed, _CALIBRATION)
        n = min(self.config.n_users, CALIBRATION_USERS)
        users = _Users.draw(rng, np.arange(n), self)
        _, _, latent = _select(rng, users, rng.choice(self.counts, n), self)
        noisy = latent + rng.normal(0.0, NOISE_SD, latent.size)
        cuts = np.quantile(noisy, RATING_CDF)
        return dataclasses.replace(self, cuts=cuts)

    def chunks(self):
        """(chunk index, first user, end user): consecutive users, about chunk_rows ratings each."""
        chunk_of = (np.cumsum(self.counts) - 1) // self.config.chunk_rows
        starts = np.flatnonzero(np.diff(chunk_of, prepend=-1))
        ends = np.append(starts[1:], len(self.counts))
        for lo, hi in zip(starts, ends, strict=True):
            yield int(chunk_of[lo]), int(lo), int(hi)

    def items_frame(self) -> pd.DataFrame:
        ids = np.arange(1, self.config.n_items + 1)
        names = np.array(GENRES)
        return pd.DataFrame(
            {
                ITEM_ID: ids,
                "title": [
                    f"Synthetic Movie {i} ({y})" for i, y in zip(ids, self.item_years, strict=True)
                ],
                "year": self.item_years.astype(np.int32),
                "genres": [list(names[row > 0]) for row in self.item_genres],
            }
        )


@dataclass(frozen=True)
class _Users:
    ids: np.ndarray  # 1-based, as written
    gender: np.ndarray  # 0 = M, 1 = F
    age: np.ndarray
    occupation: np.ndarray
    zip: np.ndarray
    factors: np.ndarray
    bias: np.ndarray
    taste: np.ndarray  # (n, n_genres): age-group and gender affinity per genre

    @classmethod
    def draw(cls, rng: np.random.Generator, index: np.ndarray, world: _World) -> _Users:
        n = len(index)
        gender = (rng.random(n) < 0.3).astype(np.int64)  # MovieLens users are ~70% male
        age = np.clip(np.round(rng.normal(33.0, 11.0, n)), 15, 75).astype(np.int32)
        group = np.searchsorted(AGE_GROUP_EDGES, age, side="right")
        return cls(
            ids=index + 1,
            gender=gender,
            age=age,
            occupation=rng.integers(0, len(OCCUPATIONS), n),
            zip=rng.integers(0, 100_000, n),
            factors=_f32(
                rng.normal(0.0, world.config.n_factors**-0.25, (n, world.config.n_factors))
            ),
            bias=_f32(rng.normal(0.0, USER_BIAS_SD, n)),
            taste=_f32(world.age_genre[group] + world.gender_genre[gender]),
        )

    def table(self) -> pa.Table:
        users = pd.DataFrame(
            {
                USER_ID: self.ids,
                "gender": np.array(["M", "F"])[self.gender],
                "age": self.age,
                "occupation": np.array(OCCUPATIONS)[self.occupation],
                "zip": np.char.zfill(self.zip.astype(str), 5),
            }
        )
        return pa.Table.from_pandas(movielens_users(users), USERS_SCHEMA, preserve_index=False)


def _allocate(rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """Ratings per user: log-normal activity, clipped to the bounds, summing to n_ratings."""
    lo = min(MIN_RATINGS_PER_USER, config.n_items)
    hi = min(MAX_RATINGS_PER_USER, config.n_items)
    if not lo * config.n_users <= config.n_ratings <= hi * config.n_users:
        raise ValueError(
            f"synthetic: n_ratings={config.n_ratings} must lie between {lo} and {hi} ratings per "
            f"user x n_users={config.n_users}, i.e. in [{lo * config.n_users}, "
            f"{hi * config.n_users}]"
        )
    weight = rng.lognormal(0.0, ACTIVITY_SIGMA, config.n_users)
    counts = np.clip(np.floor(weight / weight.sum() * config.n_ratings), lo, hi).astype(np.int64)
    order = rng.permutation(config.n_users)
    # Rounding and clipping leave a small surplus or deficit: spread it one rating per user.
    while (gap := config.n_ratings - int(counts.sum())) != 0:
        step = 1 if gap > 0 else -1
        room = counts[order] < hi if step > 0 else counts[order] > lo
        counts[order[room][: abs(gap)]] += step
    return counts


def _select(rng: np.random.Generator, users: _Users, counts: np.ndarray, world: _World):
    """Which items each user rates, and the planted score of each pick.

    Returns (row in ``users``, item index, latent score). Sampling without replacement in
    proportion to exp(key) is the Gumbel top-k trick: perturb the keys, keep the k largest.
    """
    n_items = world.config.n_items
    block = max(1, SCORE_BLOCK_ELEMENTS // n_items)
    rows, items, scores = [], [], []
    for start in range(0, len(counts), block):
        sl = slice(start, start + block)
        # This block is the generator's hot loop: float32 and in-place arithmetic throughout.
        latent = users.factors[sl] @ world.item_factors.T
        latent += users.taste[sl] @ world.item_genres.T
        latent += users.bias[sl, None]
        latent += world.item_bias
        keys = latent * PREFERENCE_WEIGHT
        keys += world.item_log_popularity
        # -log(Exp(1)) is Gumbel noise. A float32 draw can be exactly 0: clamp it, or its item
        # would get an infinite key and always be picked.
        noise = rng.standard_exponential(keys.shape, dtype=np.float32)
        keys -= np.log(np.maximum(noise, np.finfo(np.float32).tiny, out=noise), out=noise)
        k = counts[sl]
        kmax = int(k.max())
        top = np.argpartition(keys, n_items - kmax, axis=1)[:, n_items - kmax :]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), 1), 1)
        keep = np.arange(kmax) < k[:, None]
        rows.append(np.nonzero(keep)[0] + start)
        items.append(top[keep])
        scores.append(np.take_along_axis(latent, top, 1)[keep])
    return np.concatenate(rows), np.concatenate(items), np.concatenate(scores)


def _rate(rng: np.random.Generator, users: _Users, counts: np.ndarray, world: _World) -> pa.Table:
    rows, items, latent = _select(rng, users, counts, world)
    stars = 1 + np.searchsorted(world.cuts, latent + rng.normal(0.0, NOISE_SD, latent.size))
    # Each user is active over a random stretch of the window; ratings fall uniformly inside it.
    n = len(users.ids)
    start = START_TIMESTAMP + rng.random(n) * 0.9 * WINDOW_SECONDS
    span = rng.uniform(0.05, 1.0, n) * (START_TIMESTAMP + WINDOW_SECONDS - start)
    timestamp = (start[rows] + rng.random(rows.size) * span[rows]).astype(np.int64)
    order = np.lexsort((items, timestamp, rows))
    return pa.table(
        {
            USER_ID: users.ids[rows[order]],
            ITEM_ID: items[order] + 1,
            RATING: stars[order].astype(np.float32),
            TIMESTAMP: timestamp[order],
        },
        schema=INTERACTIONS_SCHEMA,
    )
