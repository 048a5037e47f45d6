"""The names every stage agrees on: columns, served tensors, model kinds, metric keys.

They are written once because each crosses a boundary: a column written by the feature stage
is read by training, the gate and the export; a tensor name is in the Triton configs, the stubs
and every client; a model kind names a directory, a registry key, a metric prefix and an
endpoint. The serving stubs import this module, so it imports nothing but the contract below
(and typing).

"Trial" alone means trial serving (release/trial.py: the candidate served once by a scratch
Triton before it is published). The hyperparameter search's trials are tuning trials
(flows/tune.py: ``tuning_trial_task``, whose ``tuning_trial`` is an Optuna trial); only the
config key ``tuning.n_trials`` and the study's ``trials/`` directory say "trial" for them.
A gate ``GateCheck`` (recflow/registry.py) bounds a metric; a ``DataCheck``
(recflow/artifacts.py) names what data validation looked at.

The served tensors' names are the wire contract every client needs, so they are written in
``recflow_client.contract`` (clients/python, the app-side client that installs without recflow;
it imports nothing either) and re-exported here.
"""

from __future__ import annotations

from typing import NamedTuple

# Served tensors: requests carry raw ids; ranking answers a score per pair, the top-k
# endpoints the best item ids with their scores. Model kinds: the directories of a training run
# (models/<run_id>/<kind>/), the keys of a registry record's models and metrics ("ranking.auc"),
# and the endpoints' names (MODEL_NAME makes the Triton model's): RECOMMEND is the composed
# endpoint (retrieve, then order), SIMILAR the item-to-item one; their tensors and order are
# serving/repository.py's CONTRACTS.
from recflow_client.contract import (
    EXCLUDE_SEEN_INPUT,
    HISTORY_INPUT,
    HISTORY_PADDING,
    HISTORY_UNKNOWN_OUTPUT,
    ITEM_IDS_OUTPUT,
    ITEM_INPUT,
    K_INPUT,
    MODEL_NAME,
    RANKED_OUTPUTS,
    RANKING,
    RECOMMEND,
    RETRIEVAL,
    SCORE_OUTPUT,
    SCORES_OUTPUT,
    SIMILAR,
    USER_INPUT,
)

__all__ = [
    "EXCLUDE_SEEN_INPUT",
    "HISTORY_INPUT",
    "HISTORY_PADDING",
    "HISTORY_UNKNOWN_OUTPUT",
    "ITEM_IDS_OUTPUT",
    "ITEM_INPUT",
    "K_INPUT",
    "MODEL_NAME",
    "RANKED_OUTPUTS",
    "RANKING",
    "RECOMMEND",
    "RETRIEVAL",
    "SCORE_OUTPUT",
    "SCORES_OUTPUT",
    "SIMILAR",
    "USER_INPUT",
]

# Columns of the canonical raw tables (recflow.artifacts.RawDataset) and of the features. The id
# columns are named as the requests' id inputs: requests carry raw ids.
USER_ID, ITEM_ID = USER_INPUT, ITEM_INPUT
RATING, TIMESTAMP = "rating", "timestamp"
# Interactions of a dataset with its own split: True on the validation rows.
IN_VALIDATION = "in_validation"
# The binary training target the feature workflow derives from ``rating``.
TARGET = "rating_binary"
ITEM_COUNT, USER_COUNT = "item_count", "user_count"
# The gate's held-out rows: raw ids and a 0/1 label (rating >= features.rating_threshold).
LABEL = "label"
# item_embeddings.parquet: the raw id next to the item features' own encoded ``item_id``.
RAW_ITEM_ID, EMBEDDING = "raw_item_id", "embedding"
# The model kind of recommend's item-item candidate source (recflow.artifacts.ItemItemSource):
# a training run's directory and a registry record's models key, but no endpoint of its own.
ITEM_ITEM = "item_item"


class MetricKey(NamedTuple):
    """A held-out metric as the gate's records name it, ``<kind>.<metric>``: the model kind (or
    endpoint) and its metric, e.g. ``recommend.recall@10``."""

    kind: str
    name: str

    @classmethod
    def parse(cls, key: str) -> MetricKey:
        kind, dot, name = key.partition(".")
        if not dot or not kind or not name:
            raise ValueError(f"{key!r} is no metric key (<kind>.<metric>, e.g. ranking.auc)")
        return cls(kind, name)

    def __str__(self) -> str:
        return f"{self.kind}.{self.name}"


def metric_keys(kind: str, metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` of one model kind under their keys (``auc`` -> ``ranking.auc``)."""
    return {str(MetricKey(kind, name)): value for name, value in metrics.items()}
