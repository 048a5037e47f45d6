"""Evaluation gate: a candidate reaches serving only if its validation metrics clear the bar."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task

from models.dlrm import RankingModel
from recflow.config import GateConfig


@dataclass(frozen=True)
class Check:
    metric: str
    value: float
    bound: float
    passed: bool

    def __str__(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return f"{self.metric} = {self.value:.4f} (bound >= {self.bound:.4f}): {verdict}"


@dataclass(frozen=True)
class GateDecision:
    checks: tuple[Check, ...]

    @property
    def blessed(self) -> bool:
        return all(check.passed for check in self.checks)

    def report(self) -> str:
        return "\n".join(str(check) for check in self.checks)


class GateFailed(RuntimeError):
    """The candidate did not clear the gate; nothing was exported."""

    def __init__(self, decision: GateDecision):
        super().__init__(f"model not blessed, export skipped:\n{decision.report()}")
        self.decision = decision


def judge(ranking: RankingModel, cfg: GateConfig) -> GateDecision:
    auc = ranking.metrics["auc"]
    return GateDecision(checks=(Check("auc", auc, cfg.min_auc, auc >= cfg.min_auc),))


@task(name="gate")
def gate_task(ranking: RankingModel, cfg: GateConfig) -> GateDecision:
    decision = judge(ranking, cfg)
    if not decision.blessed:
        raise GateFailed(decision)
    return decision
