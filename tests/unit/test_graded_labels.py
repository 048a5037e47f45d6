"""The ranker's graded training labels (models/ranking.py: graded_labels)."""

from __future__ import annotations

import numpy as np
import pytest

from models.ranking import graded_labels
from recflow.config import load_settings

STARS = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
LIKED = (STARS >= 4).astype(np.int32)


def test_grading_orders_ratings_within_each_class_and_keeps_the_binary_order():
    labels = graded_labels(STARS, LIKED, 0.25)
    assert labels.tolist() == pytest.approx([0.0, 0.125, 0.25, 0.75, 1.0])
    # Every liked pair still trains above every disliked one.
    assert labels[LIKED == 1].min() > labels[LIKED == 0].max()


def test_no_grading_is_the_binary_label():
    assert graded_labels(STARS, LIKED, 0.0).tolist() == LIKED.tolist()


@pytest.mark.parametrize("ratings", [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
def test_a_class_of_one_value_keeps_its_binary_label(ratings):
    """0/1 labels and implicit feedback (every rating 1, sampled negatives 0) have nothing to
    grade: their labels must not move towards the other class."""
    rating = np.array(ratings)
    liked = np.array([1, 0, 0, 1])
    assert graded_labels(rating, liked, 0.3).tolist() == liked.tolist()


def test_grading_without_the_raw_rating_in_the_features_is_refused_when_settings_load():
    with pytest.raises(ValueError, match="features.rating_target=true"):
        load_settings(overrides=["features.rating_target=false"])
    assert load_settings(overrides=["features.rating_target=false", "ranking.label_grading=0"])
