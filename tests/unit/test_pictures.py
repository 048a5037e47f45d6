"""The run's pictures (flows/pictures.py) and their dashboard embedding, from given results."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from flows import pictures
from flows.reporting import contest_table, picture_markdown
from recflow.artifacts import ColumnStats, Profile, RankingModel
from recflow.config import GateConfig
from recflow.registry import CandidateRecord, Contest, Evaluation, Lineage
from release.gate import judge

RED = np.array([0.839, 0.153, 0.157])  # matplotlib's tab:red, the colour of a failed check


def reds(png: Path) -> int:
    rgb = imread(png)[..., :3]
    return int((np.abs(rgb - RED).max(axis=-1) < 0.05).sum())


def gate_png(candidate_auc: float, tmp_path: Path) -> Path:
    evaluation = Evaluation(
        rows=1000,
        metrics={"ranking.auc": candidate_auc, "ranking.logloss": 0.5},
        baseline_metrics={"ranking.auc": 0.70, "ranking.logloss": 0.6},
        compared_with="20250101T000000Z-aaaaaa",
        blessed_metrics={"ranking.auc": 0.80, "ranking.logloss": 0.5},
    )
    decision = judge(evaluation, GateConfig())
    assert decision.blessed is (candidate_auc > 0.79)
    return pictures.gate_comparison(evaluation, decision, tmp_path / f"gate-{candidate_auc}.png")


def test_gate_picture_shows_a_failed_check_in_red(tmp_path: Path):
    assert reds(gate_png(0.81, tmp_path)) == 0
    # Below the blessed model's 0.80 - 0.01: the title, the panel and the bound turn red.
    assert reds(gate_png(0.75, tmp_path)) > 100


def test_training_curves_have_a_panel_per_model(tmp_path: Path):
    history = [{"epoch": 1, "loss": 0.6, "auc": 0.7}, {"epoch": 2, "loss": 0.5, "auc": 0.72}]
    model = RankingModel(
        path=tmp_path,
        features_fingerprint="f",
        params={},
        metrics={"auc": 0.72},
        baseline_metrics={"auc": 0.6},
        history=history,
        best_epoch=2,
        train_seconds=1.0,
        train_examples_per_s=1.0,
    )
    one = pictures.training_curves({"ranking": model}, {"ranking": "auc"}, tmp_path / "1.png")
    two = pictures.training_curves(
        {"a": model, "b": model}, {"a": "auc", "b": "loss"}, tmp_path / "2.png"
    )
    assert imread(two).shape[1] == 2 * imread(one).shape[1]


def test_feature_distributions_leave_out_free_text(tmp_path: Path):
    numeric = ColumnStats(dtype="int64", count=10, nulls=0, quantiles=[1.0, 5.0, 9.0])
    categorical = ColumnStats(dtype="string", count=10, nulls=0, shares={"F": 0.4, "M": 0.6})
    text = ColumnStats(dtype="string", count=10, nulls=0)
    profile = Profile(
        tables={
            "interactions": {"user_id": numeric, "item_id": numeric, "rating": numeric},
            "users": {"gender": categorical, "zip": text},
            # The encoded features table is not drawn.
            "features": {"user_id": numeric},
        }
    )
    png = pictures.feature_distributions(profile, tmp_path / "features.png")
    # Four panels fill one row of PANEL_COLUMNS: the free-text column took no panel.
    assert pictures.PANEL_COLUMNS == 4
    assert imread(png).shape[0] == round(2.6 * pictures.DPI)


def test_no_picture_without_anything_to_draw(tmp_path: Path):
    text = ColumnStats(dtype="string", count=10, nulls=0)
    profile = Profile(tables={"items": {"title": text}})
    assert pictures.feature_distributions(profile, tmp_path / "features.png") is None
    assert not (tmp_path / "features.png").exists()


def test_dashboard_embeds_the_png_itself(tmp_path: Path):
    png = gate_png(0.81, tmp_path)
    markdown = picture_markdown("Evaluation gate", png)
    assert markdown.startswith("![Evaluation gate](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1].rstrip(")")) == png.read_bytes()


def test_contenders_side_by_side_with_the_chosen_one_starred(tmp_path: Path):
    gate = GateConfig()
    contest = Contest(contenders=("run", "run-mf"), prefer="ranking.auc", chosen="run-mf")
    records = []
    for name, auc, architecture in (("run", 0.70, "dlrm"), ("run-mf", 0.80, "mf")):
        evaluation = Evaluation(
            rows=1000,
            metrics={"ranking.auc": auc, "ranking.logloss": 0.5},
            baseline_metrics={"ranking.auc": 0.72},
        )
        records.append(
            CandidateRecord.model_construct(
                id=name,
                evaluation=evaluation,
                decision=judge(evaluation, gate),
                contest=contest,
                lineage=Lineage.model_construct(params={"ranking": {"architecture": architecture}}),
            )
        )
    rows = contest_table(records)
    assert rows[0] == {
        "metric": "ranking.auc",
        "dlrm": 0.7,
        "mf *": 0.8,
        "baseline": 0.72,
        "blessed": None,
    }
    assert rows[-1] == {"metric": "gate", "dlrm": "NOT_BLESSED", "mf *": "BLESSED"}
    png = pictures.contest(records, tmp_path / pictures.CONTEST)
    # The champion lost to the baseline: its bar is red.
    assert reds(png) > 100
