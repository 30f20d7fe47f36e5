"""Planted-interest synthetic log (``fuxictr-chime prepare synthetic``): a known-answer dataset.

The yardstick for both stages (spec section 2 data protocol; docs/DATASETS.md "Synthetic"):
every user has a few stable long-term favourite topics that add up across a long history,
while sessions, each focused on one (mostly non-favourite) topic, dominate the recent
behaviour: by default (:data:`PRESETS` ``long_term``) a user's last 30 positives span about
three sessions and miss much of what the whole history says. Each exposure's click probability
comes from a known formula, so the best possible ranker (the **oracle**) is known exactly.

Generative process (all vectorized numpy, deterministic given ``seed``):

1. Items ``1..n_items``: topic ``k(i)`` (balanced over ``n_topics`` topics, random order; the
   item attribute ``cate_id``), quality ``q_i ~ N(0, quality_std^2)`` and a dense side vector
   ``side_emb`` = topic centroid (``N(0, I_d)``) + ``dense_noise * N(0, I_d)``, d = ``dense_dim``.
2. Users ``1..n_users``: ``n_favourites`` distinct favourite topics drawn uniformly, weights
   ``w ~ Dirichlet(favourite_concentration)`` (summing to 1); long-term affinity
   ``A_u(k) = long_affinity * n_favourites * w_k`` for a favourite topic k (mean
   ``long_affinity``), 0 otherwise.
3. Timeline: ``n_u ~ U{(1 - history_spread) m, ..., (1 + history_spread) m}`` exposures,
   m = ``events_per_user``; each exposure opens a new session with probability
   ``1 / session_len`` (the first always), so session lengths are geometric with mean
   ``session_len``. A session's topic ``s`` is a favourite (drawn by ``w``) with probability
   ``p_favourite_session``, else uniform over the user's non-favourite topics.
4. Exposure topic: the session topic with probability ``p_session_item``, a favourite (drawn by
   ``w``) with probability ``p_favourite_item``, else uniform over all topics; the item is
   uniform among that topic's items.
5. Click: ``p = sigmoid(logit(base_ctr) + A_u(k(i)) + session_affinity * [k(i) == s] + q_i)``,
   label = +1 with probability p (Bernoulli), else -1.
6. Times (seconds): session starts uniform over ``horizon_days`` (sorted per user) plus 60 s per
   earlier exposure of the user; exposures of a session are 60 s apart. Times are strictly
   increasing per user, so (user, timestamp) identifies an event. Default split: t1 = q0.6,
   t2 = q0.9 (every user spans the whole horizon, so about 60% of each history lies before t1).

The prepared folder gets, besides the usual layout (:mod:`fuxictr_chime.data.writer`):

* ``summary.json`` block ``oracle``: per ranking split (valid, test) the AUC and logloss of the
  true probabilities and the base-rate logloss (entropy of that split's positive rate); block
  ``references``: on the test rows, the AUC and the share of the 0.5-to-oracle gap closed by
  ``popularity`` (:func:`popularity_scorer`: the item's positives before t1), ``count``
  (:func:`count_scorer`: the user's positives before t1 in the item's topic) and two partial
  oracles, the true formula without the long-term term (``oracle_without_long_term``:
  ``A_u = 0``, the ceiling of what sessions and items explain) and without the session term
  (``oracle_without_session``); and the same count at each test row's own time, over all the
  user's positives before it (``count_all_before``: the view of a model over the whole
  sequence) and over the last 30 of them (``count_last_30``: the short DIN window's view), whose
  difference says how much long-term interest the recent window misses; block ``planted``:
  the knobs.
* ``planted_truth.json``: knobs, the formula, per user_index the favourite topics (``cate_id``
  codes and raw topics) and weights, per item_index the topic and quality.
* ``planted_events.parquet``: every event (all four parts) with user_index, item_index,
  timestamp, part, label (1/0), true ``p_click`` and the session topic; join it with the split
  files on (user_index, timestamp).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .log import BehaviorLog

if TYPE_CHECKING:
    from .split import Split

logger = logging.getLogger(__name__)

DEFAULT_T1 = "q0.6"
DEFAULT_T2 = "q0.9"
TRUTH_FILE = "planted_truth.json"
EVENTS_FILE = "planted_events.parquet"
DENSE_COLUMN = "side_emb"
START_TIME = 1_700_000_000  # seconds; an arbitrary epoch for the first session
STEP_SECONDS = 60  # gap between two exposures of a session
RECENT_WINDOW = 30  # positives of the short DIN window (the paper's DIN; count_last_30 reference)
FORMULA = ("p = sigmoid(logit(base_ctr) + A_u(topic(i)) + session_affinity * [topic(i) == "
           "session_topic] + quality(i)); A_u(k) = long_affinity * n_favourites * w_u(k) for a "
           "favourite topic k, else 0")


@dataclass(frozen=True)
class PlantedKnobs:
    """Knobs of the generator (module docstring); defaults = ``prepare synthetic`` defaults.

    Attributes:
        n_users: users (default 1000).
        n_items: items (default 4000), at least ``n_topics``.
        n_topics: topics = item categories ``cate_id`` (default 30).
        n_favourites: long-term favourite topics per user (default 2), < ``n_topics``.
        favourite_concentration: Dirichlet concentration of the favourite weights (default 5.0;
            large = equal weights).
        long_affinity: mean logit bonus of a favourite topic (default 4.0).
        events_per_user: mean exposures per user over the whole log (default 1200).
        history_spread: exposures per user vary uniformly by +-this share (default 0.5).
        session_len: mean exposures per session (default 40.0, >= 1).
        p_favourite_session: probability that a session's topic is a favourite (default 0.25).
        p_session_item: probability that an exposure shows the session topic (default 0.8).
        p_favourite_item: probability that an exposure shows a favourite topic (default 0.1).
        session_affinity: logit bonus of the session topic (default 2.5).
        base_ctr: click probability of a quality-0 item outside the user's favourites and
            session (default 0.03).
        quality_std: standard deviation of the item-quality logit (default 0.3).
        dense_dim: width of ``side_emb`` (default 16; 0 = no dense column).
        dense_noise: noise scale of ``side_emb`` around its topic centroid (default 1.0).
        horizon_days: time span of the log (default 90).
        seed: random seed (default 0).
    """

    n_users: int = 1000
    n_items: int = 4000
    n_topics: int = 30
    n_favourites: int = 2
    favourite_concentration: float = 5.0
    long_affinity: float = 4.0
    events_per_user: int = 1200
    history_spread: float = 0.5
    session_len: float = 40.0
    p_favourite_session: float = 0.25
    p_session_item: float = 0.8
    p_favourite_item: float = 0.1
    session_affinity: float = 2.5
    base_ctr: float = 0.03
    quality_std: float = 0.3
    dense_dim: int = 16
    dense_noise: float = 1.0
    horizon_days: int = 90
    seed: int = 0

    @classmethod
    def from_options(cls, preset: str | None = None, **options) -> "PlantedKnobs":
        """Knobs from keyword options, over the values of ``preset`` (a :data:`PRESETS` name)
        when given; ConfigError naming an unknown preset or an unknown or invalid knob."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ConfigError(f"preparer 'synthetic': unknown knob(s) {unknown}; accepted: "
                              f"{names} and 'preset'")
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"preparer 'synthetic': unknown preset {preset!r}; accepted: "
                              f"{sorted(PRESETS)}")
        return cls(**{**PRESETS.get(preset, {}), **options}).validated()

    def validated(self) -> "PlantedKnobs":
        """Check every knob; ConfigError naming the first bad one."""
        for name in ("n_users", "n_items", "n_topics", "n_favourites", "events_per_user",
                     "horizon_days"):
            _check_int(self, name, low=1)
        _check_int(self, "dense_dim", low=0)
        _check_int(self, "seed", low=0)
        if self.n_favourites >= self.n_topics:
            raise ConfigError(f"n_favourites ({self.n_favourites}) must be smaller than "
                              f"n_topics ({self.n_topics})")
        if self.n_items < self.n_topics:
            raise ConfigError(f"n_items ({self.n_items}) must be at least n_topics "
                              f"({self.n_topics}): every topic needs an item")
        _check_float(self, "session_len", low=1.0)
        _check_float(self, "history_spread", low=0.0, high=1.0, high_open=True)
        for name in ("p_favourite_session", "p_session_item", "p_favourite_item"):
            _check_float(self, name, low=0.0, high=1.0)
        if self.p_session_item + self.p_favourite_item > 1.0:
            raise ConfigError(f"p_session_item + p_favourite_item = "
                              f"{self.p_session_item + self.p_favourite_item} must be <= 1")
        _check_float(self, "base_ctr", low=0.0, high=1.0, low_open=True, high_open=True)
        for name in ("favourite_concentration",):
            _check_float(self, name, low=0.0, low_open=True)
        for name in ("quality_std", "dense_noise"):
            _check_float(self, name, low=0.0)
        for name in ("long_affinity", "session_affinity"):
            _check_float(self, name)
        return self

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Named knob sets (``--option preset=NAME``; other options override single knobs).
#: ``long_term`` is the default (the knobs above): long sessions (40 exposures, 80% in the
#: session's topic) fill a user's last 30 positives with about 3 sessions, while the
#: favourites (30 topics, 2 favourites) add up over the whole history and carry most of the
#: oracle's gap (oracle without them: 20%; without sessions: 91%), so counting a user's topics
#: over all positives before a row closes clearly more of the gap than over the last 30
#: (summary.json ``count_all_before`` against ``count_last_30``). ``sessions`` is the default
#: until 2026-12-04, which the earlier planted-log results used: short sessions dominate the
#: recent positives and carry about half of the gap, and the last 30 positives span about 7
#: sessions and hold the favourites in the same share as the whole history
#: (docs/DATASETS.md, presets; tests/data/test_data_planted.py).
PRESETS: dict[str, dict] = {
    "long_term": {},
    "sessions": {"n_topics": 50, "n_favourites": 3, "session_len": 10.0, "p_session_item": 0.5,
                 "p_favourite_item": 0.2, "p_favourite_session": 0.05, "session_affinity": 3.5},
}


def _check_int(knobs: PlantedKnobs, name: str, *, low: int) -> None:
    value = getattr(knobs, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_float(knobs: PlantedKnobs, name: str, *, low: float = -math.inf,
                 high: float = math.inf, low_open: bool = False, high_open: bool = False) -> None:
    value = getattr(knobs, name)
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.number)) \
        and math.isfinite(float(value))
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and \
             (value < high if high_open else value <= high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be a finite number in {bounds}, "
                          f"got {getattr(knobs, name)!r}")


@dataclass
class PlantedTruth:
    """What the generator knows. Arrays of events follow the row order of ``log.events``.

    Attributes:
        knobs: the generator's knobs.
        p_click: (N,) true click probability of every event.
        session_topic: (N,) topic of the event's session.
        favourites: (U, F) favourite topics of user ``u + 1`` (row u), weight order descending.
        weights: (U, F) their weights (rows sum to 1).
        item_topic: (I,) topic of item ``i + 1``.
        item_quality: (I,) quality logit of item ``i + 1``.
    """

    knobs: PlantedKnobs
    p_click: np.ndarray
    session_topic: np.ndarray
    favourites: np.ndarray
    weights: np.ndarray
    item_topic: np.ndarray
    item_quality: np.ndarray


@dataclass
class PlantedLog(BehaviorLog):
    """A :class:`BehaviorLog` that carries its generator's :class:`PlantedTruth`."""

    truth: PlantedTruth | None = field(default=None, repr=False)


def load(raw_dir: str | os.PathLike | None = None, *, name: str = "synthetic",
         **knobs) -> PlantedLog:
    """Generate the planted log (the ``synthetic`` preparer's loader; no raw folder).

    Args:
        raw_dir: must be None (the data are generated).
        name: dataset name (FuxiCTR dataset_id), default ``"synthetic"``.
        **knobs: :class:`PlantedKnobs` fields (``--option KEY=VALUE`` on the command line).
    """
    if raw_dir is not None:
        raise ConfigError(f"preparer 'synthetic' generates its data and reads no raw folder "
                          f"(got {raw_dir!r}); pass knobs with --option KEY=VALUE")
    return generate(PlantedKnobs.from_options(**knobs), name=name)


def generate(knobs: PlantedKnobs, *, name: str = "synthetic") -> PlantedLog:
    """The planted log of ``knobs`` (module docstring); deterministic given ``knobs.seed``."""
    knobs = knobs.validated()
    rng = np.random.default_rng(knobs.seed)
    items = _items(knobs, rng)
    favourites, weights, non_favourites = _users(knobs, rng)
    user, position, opens = _timeline(knobs, rng)  # (N,) each
    session = np.cumsum(opens) - 1  # (N,) global session number
    starts = np.flatnonzero(opens)  # (S,) first exposure of each session
    session_user = user[starts]  # (S,)
    s_topic = _session_topics(knobs, rng, session_user, favourites, weights, non_favourites)
    topic = _exposure_topics(knobs, rng, user, s_topic[session], favourites, weights)  # (N,)
    item = _pick_items(rng, topic, items["topic"], knobs.n_topics)  # (N,) 0-based
    p_click = click_probability(knobs, favourites, weights, user, items["topic"][item],
                                s_topic[session], items["quality"][item])
    label = np.where(rng.random(len(p_click)) < p_click, 1, -1).astype(np.int8)
    time = _times(knobs, rng, session_user, starts, position, session)
    events = pd.DataFrame({"user_id": user + 1, "item_id": item + 1, "timestamp": time,
                           "label": label})
    table = pd.DataFrame({"item_id": np.arange(1, knobs.n_items + 1, dtype=np.int64),
                          "cate_id": items["topic"].astype(np.int64)})
    dense = {}
    if knobs.dense_dim:
        table[DENSE_COLUMN] = list(items["vectors"])
        dense = {DENSE_COLUMN: knobs.dense_dim}
    truth = PlantedTruth(knobs=knobs, p_click=p_click, session_topic=s_topic[session],
                         favourites=favourites, weights=weights, item_topic=items["topic"],
                         item_quality=items["quality"])
    logger.info("planted log: %d users, %d items, %d events, %d sessions, positive rate %.3f",
                knobs.n_users, knobs.n_items, len(events), len(starts), float(np.mean(label > 0)))
    return PlantedLog(events=events, items=table, categorical=["cate_id"], dense=dense,
                      name=name, truth=truth)


def _items(knobs: PlantedKnobs, rng: np.random.Generator) -> dict[str, np.ndarray]:
    topic = rng.permutation(np.arange(knobs.n_items) % knobs.n_topics).astype(np.int64)  # (I,)
    quality = rng.normal(0.0, knobs.quality_std, knobs.n_items)  # (I,)
    centroids = rng.standard_normal((knobs.n_topics, knobs.dense_dim))  # (K, d)
    noise = rng.standard_normal((knobs.n_items, knobs.dense_dim))  # (I, d)
    vectors = (centroids[topic] + knobs.dense_noise * noise).astype(np.float32)  # (I, d)
    return {"topic": topic, "quality": quality, "vectors": vectors}


def _users(knobs: PlantedKnobs, rng: np.random.Generator):
    """(U, F) favourite topics (by descending weight), (U, F) weights, (U, K-F) the others."""
    order = np.argsort(rng.random((knobs.n_users, knobs.n_topics)), axis=1)  # (U, K) random
    weights = rng.dirichlet(np.full(knobs.n_favourites, knobs.favourite_concentration),
                            size=knobs.n_users)  # (U, F)
    by_weight = np.argsort(-weights, axis=1, kind="stable")  # (U, F)
    favourites = np.take_along_axis(order[:, :knobs.n_favourites], by_weight, axis=1)
    weights = np.take_along_axis(weights, by_weight, axis=1)
    return favourites, weights, order[:, knobs.n_favourites:]


def _timeline(knobs: PlantedKnobs, rng: np.random.Generator):
    """Per exposure: user (0-based), position in the user's timeline, whether it opens a session."""
    m, s = knobs.events_per_user, knobs.history_spread
    low, high = max(1, int(round(m * (1 - s)))), max(1, int(round(m * (1 + s))))
    lengths = rng.integers(low, high + 1, knobs.n_users)  # (U,)
    user = np.repeat(np.arange(knobs.n_users, dtype=np.int64), lengths)  # (N,)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (U,)
    position = np.arange(len(user), dtype=np.int64) - offsets[user]  # (N,)
    opens = (position == 0) | (rng.random(len(user)) < 1.0 / knobs.session_len)  # (N,)
    return user, position, opens


def _by_weight(rng: np.random.Generator, favourites: np.ndarray, weights: np.ndarray,
               users: np.ndarray) -> np.ndarray:
    """One favourite topic per entry of ``users``, drawn by the user's weights."""
    cum = np.cumsum(weights[users], axis=1)  # (n, F)
    pick = (rng.random(len(users))[:, None] >= cum[:, :-1]).sum(axis=1)  # (n,) in [0, F)
    return favourites[users, pick]


def _session_topics(knobs, rng, session_user, favourites, weights, non_favourites) -> np.ndarray:
    n = len(session_user)
    other = non_favourites[session_user, rng.integers(0, non_favourites.shape[1], n)]  # (S,)
    favourite = _by_weight(rng, favourites, weights, session_user)  # (S,)
    return np.where(rng.random(n) < knobs.p_favourite_session, favourite, other)


def _exposure_topics(knobs, rng, user, session_topic, favourites, weights) -> np.ndarray:
    n = len(user)
    draw = rng.random(n)  # (N,) which source
    favourite = _by_weight(rng, favourites, weights, user)  # (N,)
    uniform = rng.integers(0, knobs.n_topics, n)  # (N,)
    return np.select([draw < knobs.p_session_item,
                      draw < knobs.p_session_item + knobs.p_favourite_item],
                     [session_topic, favourite], uniform)


def _pick_items(rng, topic: np.ndarray, item_topic: np.ndarray, n_topics: int) -> np.ndarray:
    """A uniform item of each entry's topic (0-based item numbers)."""
    by_topic = np.argsort(item_topic, kind="stable")  # (I,) items grouped by topic
    counts = np.bincount(item_topic, minlength=n_topics)  # (K,)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (K,)
    offset = rng.integers(0, counts[topic])  # (N,) uniform in [0, items of the topic)
    return by_topic[first[topic] + offset]


def click_probability(knobs: PlantedKnobs, favourites: np.ndarray, weights: np.ndarray,
                      user: np.ndarray, topic: np.ndarray, session_topic: np.ndarray,
                      quality: np.ndarray) -> np.ndarray:
    """The true click probability (module docstring, step 5) of exposures given as arrays."""
    hit = favourites[user] == topic[:, None]  # (N, F)
    affinity = knobs.long_affinity * knobs.n_favourites * (weights[user] * hit).sum(axis=1)
    logit = (math.log(knobs.base_ctr / (1.0 - knobs.base_ctr)) + affinity
             + knobs.session_affinity * (topic == session_topic) + quality)  # (N,)
    return 1.0 / (1.0 + np.exp(-logit))


def _times(knobs, rng, session_user, starts, position, session) -> np.ndarray:
    """Strictly increasing seconds per user: sorted uniform session starts + 60 s per exposure."""
    draw = rng.random(len(starts)) * knobs.horizon_days * 86_400  # (S,)
    order = np.lexsort((draw, session_user))  # sessions of a user are contiguous and in order
    start = np.floor(draw[order]).astype(np.int64)  # (S,) k-th session of the user, k-th start
    return START_TIME + start[session] + STEP_SECONDS * position  # (N,)


# ---------------------------------------------------------------------------- non-learned scorers
def popularity_scorer(positive_item: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Item popularity: how many of the positives ``positive_item`` name each query ``item``."""
    positive_item, item = np.asarray(positive_item, np.int64), np.asarray(item, np.int64)
    size = int(max(positive_item.max(initial=-1), item.max(initial=-1))) + 1
    return np.bincount(positive_item, minlength=size)[item].astype(np.float64)


def count_scorer(positive_user: np.ndarray, positive_time: np.ndarray, positive_topic: np.ndarray,
                 user: np.ndarray, time: np.ndarray, topic: np.ndarray, *, n_topics: int,
                 window: int | None = None, smoothing: float = 1.0) -> np.ndarray:
    """Smoothed share of a user's own positives that fall in the query item's topic.

    For each query (user, time, topic): among the user's positives strictly before ``time``
    (only the last ``window`` of them when given; tied times keep the input order),
    ``(c + smoothing / n_topics) / (n + smoothing)``
    with c the positives in ``topic`` and n all of them (1 / n_topics without positives). Pass
    ``time = t1`` for every query to score with the positives before t1 (the compressor's view).
    Vectorized with sorted int64 keys; ``tests/data/test_data_planted.py`` checks it against a
    plain loop.
    """
    positive_user = np.asarray(positive_user, np.int64)
    user, topic = np.asarray(user, np.int64), np.asarray(topic, np.int64)
    if not smoothing > 0:
        raise ConfigError(f"count_scorer: smoothing must be positive, got {smoothing!r}")
    prior = smoothing / n_topics
    if len(positive_user) == 0:
        return np.full(len(user), 1.0 / n_topics)
    times, rank = np.unique(np.concatenate([positive_time, time]), return_inverse=True)
    rank = rank.reshape(-1).astype(np.int64)
    p_rank, q_rank = rank[:len(positive_user)], rank[len(positive_user):]  # (P,), (Q,)
    n_times = np.int64(len(times) + 1)
    p_key = positive_user * n_times + p_rank  # (P,) orders by (user, time)
    order = np.argsort(p_key, kind="stable")
    p_key, p_user = p_key[order], positive_user[order]
    p_topic = np.asarray(positive_topic, np.int64)[order]
    first = np.searchsorted(p_key, p_user * n_times, side="left")  # (P,) user's first positive
    position = np.arange(len(p_key), dtype=np.int64) - first  # (P,) index in the user's sequence
    q_first = np.searchsorted(p_key, user * n_times, side="left")  # (Q,)
    before = np.searchsorted(p_key, user * n_times + q_rank, side="left") - q_first  # (Q,)
    start = np.zeros_like(before) if window is None else np.maximum(before - int(window), 0)
    span = np.int64(position.max(initial=0) + 2)
    t_key = np.sort((p_user * n_topics + p_topic) * span + position)  # (P,) (user, topic, position)
    base = (user * n_topics + topic) * span  # (Q,)
    count = np.searchsorted(t_key, base + before) - np.searchsorted(t_key, base + start)  # (Q,)
    total = before - start
    return (count + prior) / (total + smoothing)


# ---------------------------------------------------------------------------- metrics
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count one half); NaN when a class is missing."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64))  # average ranks of ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy (nats), probabilities clipped to [eps, 1 - eps]."""
    labels = np.asarray(labels).astype(np.float64)
    probs = np.clip(np.asarray(probs, np.float64), eps, 1.0 - eps)
    return float(-np.mean(labels * np.log(probs) + (1.0 - labels) * np.log1p(-probs)))


def gap_closed(model_auc: float, oracle_auc: float) -> float:
    """Share of the gap between 0.5 and the oracle's AUC that ``model_auc`` closes."""
    return float((model_auc - 0.5) / (oracle_auc - 0.5)) if oracle_auc > 0.5 else float("nan")


def _number(value: float) -> float | None:
    """Rounded for summary.json; None for NaN (an AUC on rows of one class)."""
    return None if math.isnan(value) else round(float(value), 6)


def _metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    rate = float(np.mean(labels)) if len(labels) else float("nan")
    return {"rows": int(len(labels)), "positive_rate": _number(rate),
            "auc": _number(auc(labels, probs)), "logloss": _number(logloss(labels, probs)),
            "base_logloss": _number(logloss(labels, np.full(len(labels), rate)))}


# ---------------------------------------------------------------------------- prepared outputs
def extra_outputs(log: PlantedLog, split: "Split") -> tuple[dict, dict]:
    """Summary blocks and extra files of the prepared folder (module docstring).

    Called by :func:`fuxictr_chime.data.preparers.prepare` with the log and its
    :class:`~fuxictr_chime.data.split.Split`, before anything is written. Returns
    ``({"oracle": ..., "references": ..., "planted": knobs}, {file name: JSON dict or table})``.
    """
    from .writer import encode_values

    truth = getattr(log, "truth", None)
    if truth is None:
        raise ConfigError("extra_outputs needs the PlantedLog of planted.load / generate")
    ev = log.events
    enc = {"user": encode_values(ev["user_id"])[0], "item": encode_values(ev["item_id"])[0],
           "time": ev["timestamp"].to_numpy(np.int64),
           "label": ev["label"].to_numpy() > 0,
           "topic": truth.item_topic[ev["item_id"].to_numpy() - 1], "parts": split.parts}
    oracle = {part: _metrics(enc["label"][split.rows(part)], truth.p_click[split.rows(part)])
              for part in ("valid", "test")}
    test_auc = auc(enc["label"][split.test], truth.p_click[split.test])
    references = {"test": _references(log, split, enc, test_auc)}
    summary = {"oracle": oracle, "references": references, "planted": truth.knobs.as_dict()}
    files = {TRUTH_FILE: _truth_json(log), EVENTS_FILE: _events_table(truth, enc)}
    logger.info("oracle test AUC %.4f; references %s", test_auc,
                {k: v["auc"] for k, v in references["test"].items()})
    return summary, files


def _references(log: PlantedLog, split: "Split", enc: dict, oracle_auc: float) -> dict:
    """Test AUC of the non-learned scorers and of partial oracles, with the gap each closes."""
    from .split import REPRESENTATION

    truth, knobs = log.truth, log.truth.knobs
    rows = split.test
    y = enc["label"][rows]
    early = enc["label"] & (split.parts == REPRESENTATION)  # positives before t1
    user, topic = enc["user"][rows], enc["topic"][rows]
    t1 = np.full(len(rows), split.t1, np.int64)
    positive = enc["label"]  # every positive of the log: the ranking sequences' behaviours
    scores = {
        "popularity": popularity_scorer(enc["item"][early], enc["item"][rows]),
        "count": count_scorer(enc["user"][early], enc["time"][early], enc["topic"][early],
                              user, t1, topic, n_topics=knobs.n_topics),
    }
    for key, window in (("count_all_before", None), (f"count_last_{RECENT_WINDOW}", RECENT_WINDOW)):
        scores[key] = count_scorer(enc["user"][positive], enc["time"][positive],
                                   enc["topic"][positive], user, enc["time"][rows], topic,
                                   n_topics=knobs.n_topics, window=window)
    raw_user = log.events["user_id"].to_numpy()[rows] - 1
    quality = truth.item_quality[log.events["item_id"].to_numpy()[rows] - 1]
    session = truth.session_topic[rows]
    no_long = dataclasses.replace(knobs, long_affinity=0.0)
    no_session = dataclasses.replace(knobs, session_affinity=0.0)
    for key, variant in (("oracle_without_long_term", no_long),
                         ("oracle_without_session", no_session)):
        scores[key] = click_probability(variant, truth.favourites, truth.weights, raw_user,
                                        topic, session, quality)
    out = {}
    for key, score in scores.items():
        value = auc(y, score)
        out[key] = {"auc": _number(value), "gap_closed": _number(gap_closed(value, oracle_auc))}
    return out


def _truth_json(log: PlantedLog) -> dict:
    """planted_truth.json: knobs, formula, favourites per user_index, topic per item_index."""
    from .writer import encode_values

    truth = log.truth
    raw_items = np.unique(log.events["item_id"].to_numpy())  # item_index k <-> raw_items[k - 1]
    item_topic = truth.item_topic[raw_items - 1]
    cate, _ = encode_values(item_topic)  # the writer's cate_id codes of those items
    topic_to_cate = dict(zip(item_topic.tolist(), cate.tolist()))
    raw_users = np.unique(log.events["user_id"].to_numpy())  # user_index k <-> raw_users[k - 1]
    favourites = truth.favourites[raw_users - 1]  # (U, F)
    return {
        "formula": FORMULA,
        "base_logit": math.log(truth.knobs.base_ctr / (1.0 - truth.knobs.base_ctr)),
        "knobs": truth.knobs.as_dict(),
        "users": {
            "user_index": np.arange(1, len(raw_users) + 1).tolist(),
            "favourite_topics": favourites.tolist(),
            "favourite_cate_ids": [[topic_to_cate.get(t, 0) for t in row]
                                   for row in favourites.tolist()],
            "favourite_weights": truth.weights[raw_users - 1].tolist(),
        },
        "items": {
            "item_index": np.arange(1, len(raw_items) + 1).tolist(),
            "topic": item_topic.tolist(),
            "cate_id": cate.tolist(),
            "quality": truth.item_quality[raw_items - 1].tolist(),
        },
        "notes": "favourite_cate_ids: 0 = the topic has no item in the log",
    }


def _events_table(truth: PlantedTruth, enc: dict):
    """planted_events.parquet: every event with its true probability, by (user, time)."""
    import pyarrow as pa

    from .split import PART_NAMES

    order = np.lexsort((enc["time"], enc["user"]))
    parts = pa.DictionaryArray.from_arrays(pa.array(enc["parts"][order], pa.int8()),
                                           pa.array(list(PART_NAMES)))
    return pa.table({
        "user_index": enc["user"][order],
        "item_index": enc["item"][order],
        "timestamp": enc["time"][order],
        "part": parts,
        "label": enc["label"][order].astype(np.float32),
        "p_click": truth.p_click[order],
        "topic": enc["topic"][order],
        "session_topic": truth.session_topic[order],
    })
