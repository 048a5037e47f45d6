from pathlib import Path

import pytest

from models.dlrm import RankingModel
from recflow.config import GateConfig
from tasks.gate import GateFailed, gate_task, judge


def ranking(auc: float) -> RankingModel:
    return RankingModel(
        path=Path("/nowhere"),
        features_fingerprint="f",
        params={},
        metrics={"auc": auc, "logloss": 0.5},
        baseline_metrics={"auc": 0.6, "logloss": 0.6},
        history=[],
        best_epoch=1,
        train_seconds=1.0,
        train_examples_per_s=1.0,
    )


def test_gate_blesses_at_and_above_the_bound():
    assert judge(ranking(0.70), GateConfig(min_auc=0.70)).blessed
    decision = judge(ranking(0.69), GateConfig(min_auc=0.70))
    assert not decision.blessed
    assert "auc = 0.6900 (bound >= 0.7000): FAIL" in decision.report()


def test_gate_task_raises_with_the_failed_checks():
    with pytest.raises(GateFailed, match="auc = 0.5000.*FAIL"):
        gate_task.fn(ranking(0.5), GateConfig(min_auc=0.7))
    assert gate_task.fn(ranking(0.9), GateConfig(min_auc=0.7)).blessed
