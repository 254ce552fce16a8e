"""Confidence intervals for the pooled explanation scores of score_explanations.

A pooled figure (balanced accuracy, F1, AUROC over every judgement of every scored feature) has
two sources of sampling error: which features were picked, and which snippets each feature was
judged on. The hierarchical bootstrap here resamples both: features with replacement, then
within each drawn feature its judgements with replacement, and recomputes the pooled statistic
on each resample; the interval is the percentile interval of those values.

The statistics match metrics.binary_metrics and metrics.auroc (an unparsed answer counts as
"no"; AUROC is Mann-Whitney with ties counted half) but are computed for all resamples at once
with numpy: a loop over 1,000 resamples in Python would be far too slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

STATISTICS = {"binary": ("balanced_accuracy", "f1", "auroc"), "similarity": ("auroc",)}
# which statistic each scoring method's judgements take (score.py's methods)
METHOD_STATISTIC = {"detection": "binary", "fuzzing": "binary", "embedding": "similarity"}
# Judgements drawn per chunk of resamples: bounds memory (~ a few hundred MB at most) whatever
# the number of features and snippets.
_CHUNK_JUDGEMENTS = 2_000_000


def bootstrap_intervals(per_feature: Sequence[Sequence[dict]], *, statistic: str, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, list[float] | None]:
    """Percentile intervals [lo, hi] of pooled metrics by a hierarchical bootstrap.

    per_feature: each feature's judgements, as score.py writes them: for statistic "binary"
    (detection, fuzzing) dicts {"label": bool, "answer": bool | None, "p_yes": float | None},
    giving intervals for "balanced_accuracy", "f1" and "auroc" (AUROC only when every p_yes is
    a number); for "similarity" (embedding) dicts {"label": bool, "similarity": float}, giving
    an interval for "auroc".

    A metric undefined in a resample (balanced accuracy or AUROC with one class only, F1 with no
    positive) is left out of that resample's values; a metric undefined in every resample gets None.
    Features without judgements are dropped first: they add nothing to a pooled figure.
    Fewer than 2 features gives None for every metric: resampling one feature says nothing
    about which features were picked, so its interval would be falsely narrow.
    Deterministic for a given seed.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"bootstrap_intervals: unknown statistic {statistic!r}; use one of {sorted(STATISTICS)}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_intervals: level must lie strictly between 0 and 1, not {level!r}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"bootstrap_intervals: n_boot must be a positive integer, not {n_boot!r}")
    names = STATISTICS[statistic]
    labels, answers, scores, counts = _flatten(per_feature, statistic)
    if len(counts) < 2:
        return dict.fromkeys(names)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # AUROC only needs the order of the scores: rank them once, not in every resample
    distinct, score_rank = np.unique(scores, return_inverse=True) if scores is not None else ((), None)
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    per_chunk = max(1, min(int(n_boot), _CHUNK_JUDGEMENTS // max(1, len(labels))))
    done = 0
    while done < n_boot:
        size = min(per_chunk, int(n_boot) - done)
        index, group = _resample(rng, starts, counts, size)
        for name, array in _pooled_statistics(labels[index], None if answers is None else answers[index],
                                              None if score_rank is None else score_rank[index], len(distinct),
                                              group, size).items():
            if name in values:
                values[name].append(array)
        done += size
    tail = (1 - level) / 2
    intervals: dict[str, list[float] | None] = {}
    for name in names:
        if not values[name]:
            intervals[name] = None
            continue
        drawn = np.concatenate(values[name])
        drawn = drawn[~np.isnan(drawn)]
        intervals[name] = ([float(q) for q in np.quantile(drawn, [tail, 1 - tail])] if drawn.size else None)
    return intervals


def pooled_intervals(records: Sequence[dict], *, source: str, method: str, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, list[float] | None]:
    """bootstrap_intervals over the same judgements as score.pooled(records, source, method):
    every feature record whose scores[source] has `method`."""
    if method not in METHOD_STATISTIC:
        raise ValueError(f"pooled_intervals: unknown scoring method {method!r}; use one of {sorted(METHOD_STATISTIC)}")
    per_feature = [r["scores"][source][method]["judgements"] for r in records
                   if method in r["scores"].get(source, {})]
    return bootstrap_intervals(per_feature, statistic=METHOD_STATISTIC[method], n_boot=n_boot, seed=seed,
                               level=level)


def _flatten(per_feature: Sequence[Sequence[dict]], statistic: str):
    """labels, answers (binary only; None counts as "no"), scores (or None), judgements per feature."""
    labels, answers, scores, counts = [], [], [], []
    for i, judgements in enumerate(per_feature):
        for k, judgement in enumerate(judgements):
            where = f"bootstrap_intervals: judgement {k} of feature {i}"
            label = judgement.get("label") if isinstance(judgement, dict) else None
            if not isinstance(label, (bool, np.bool_)):
                raise ValueError(f"{where} has no boolean 'label' ({judgement!r}); pass each feature's "
                                 "'judgements' list from the score file")
            labels.append(bool(label))
            if statistic == "binary":
                answers.append(bool(judgement.get("answer")))
                scores.append(judgement.get("p_yes"))
            else:
                similarity = judgement.get("similarity")
                if not isinstance(similarity, (int, float)) or not math.isfinite(similarity):
                    raise ValueError(f"{where} has no finite 'similarity' ({judgement!r}); statistic "
                                     "'similarity' is for the embedding scorer's judgements")
                scores.append(float(similarity))
        if judgements:
            counts.append(len(judgements))
    have_scores = bool(scores) and all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores)
    return (np.array(labels, dtype=bool), np.array(answers, dtype=bool) if statistic == "binary" else None,
            np.array(scores, dtype=float) if have_scores else None, np.array(counts, dtype=np.int64))


def _resample(rng: np.random.Generator, starts: np.ndarray, counts: np.ndarray, size: int):
    """`size` hierarchical resamples: flat judgement indices, and which resample each belongs to."""
    n_features = len(counts)
    drawn = rng.integers(0, n_features, size=(size, n_features)).ravel()
    drawn_counts = counts[drawn]
    # each drawn feature contributes as many judgements as it has, drawn from its own
    within = rng.integers(0, np.repeat(drawn_counts, drawn_counts))
    index = np.repeat(starts[drawn], drawn_counts) + within
    group = np.repeat(np.arange(size), drawn_counts.reshape(size, n_features).sum(axis=1))
    return index, group


def _pooled_statistics(labels: np.ndarray, answers: np.ndarray | None, score_rank: np.ndarray | None,
                       n_distinct: int, group: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
    """Each group's pooled metrics (NaN where undefined), as binary_metrics / auroc compute them.
    score_rank: each judgement's score as its index among the `n_distinct` sorted distinct scores
    (None: no AUROC)."""
    n_positive = np.bincount(group[labels], minlength=n_groups)
    n_negative = np.bincount(group[~labels], minlength=n_groups)
    both = (n_positive > 0) & (n_negative > 0)
    out = {}
    if answers is not None:
        tp = np.bincount(group[labels & answers], minlength=n_groups)
        fp = np.bincount(group[~labels & answers], minlength=n_groups)
        tn = n_negative - fp
        fn = n_positive - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            out["balanced_accuracy"] = np.where(both, (tp / n_positive + tn / n_negative) / 2, np.nan)
            # 2PR/(P+R) = 2tp/(2tp+fp+fn); binary_metrics' 0 when tp = 0 is the same value
            out["f1"] = np.where(n_positive > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    if score_rank is not None:
        out["auroc"] = _grouped_auroc(score_rank, n_distinct, labels, group, n_groups, n_positive, n_negative, both)
    return out


def _grouped_auroc(score_rank: np.ndarray, n_distinct: int, labels: np.ndarray, group: np.ndarray,
                   n_groups: int, n_positive: np.ndarray, n_negative: np.ndarray, both: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC per group (ties count half), from per-group histograms over the distinct
    scores: a positive beats every negative with a lower score and half of those with its own."""
    cell = group * n_distinct + score_rank
    positives = np.bincount(cell[labels], minlength=n_groups * n_distinct).reshape(n_groups, n_distinct)
    negatives = np.bincount(cell[~labels], minlength=n_groups * n_distinct).reshape(n_groups, n_distinct)
    below = np.cumsum(negatives, axis=1) - negatives
    wins = (positives * (below + 0.5 * negatives)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(both, wins / (n_positive * n_negative), np.nan)
