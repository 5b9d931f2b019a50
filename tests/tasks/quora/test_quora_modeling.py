"""Scores to P(duplicate): the distance model's calibration is kept as plain numbers (in
train.json and the served model) and gives exactly what the fitted calibration gives."""
import json

import numpy as np
from sklearn.linear_model import LogisticRegression

from tasks.quora.modeling import calibrate, probabilities


def test_the_saved_calibration_gives_the_fitted_ones_probabilities():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=400)
    y = (scores + rng.normal(size=400) > 0).astype(int)
    dev = rng.random(400) < 0.3
    fitted = LogisticRegression().fit(scores[dev, None], y[dev])
    saved = json.loads(json.dumps(calibrate("siamese", scores, dev, y)))  # as train.json has it
    np.testing.assert_array_equal(probabilities("siamese", scores, saved),
                                  fitted.predict_proba(scores[:, None])[:, 1])


def test_logits_need_no_calibration():
    scores = np.array([-2.0, 0.0, 3.0])
    assert calibrate("fc_head", scores, np.ones(3, bool), np.array([0, 1, 1])) is None
    np.testing.assert_allclose(probabilities("birnn_conv", scores, None),
                               1 / (1 + np.exp(-scores)))
