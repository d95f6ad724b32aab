"""The quality report's scoring: perplexity from next-token logits, aligned one position back."""

import math

import numpy as np

from kollm.release import quality


def test_uniform_logits_give_perplexity_equal_to_the_vocabulary_size():
    ids = [[1, 2, 3, 4], [5, 6]]
    logits = [np.zeros((len(row), 50), dtype=np.float32) for row in ids]
    scores = quality._score(logits, ids)
    assert scores.count == 4
    assert math.isclose(math.exp(scores.nll / scores.count), 50.0, rel_tol=1e-9)


def test_logits_at_position_i_minus_1_score_token_i():
    ids = [[0, 3, 1, 2]]
    logits = np.full((4, 8), -20.0, dtype=np.float32)
    for pos, nxt in enumerate(ids[0][1:]):
        logits[pos, nxt] = 20.0  # confident and right about the *next* token
    logits[3, 7] = 20.0  # the last position predicts past the text and must be ignored
    scores = quality._score([logits], ids)
    assert math.exp(scores.nll / scores.count) < 1.0001
    assert scores.argmax[0].tolist() == [3, 1, 2]
    shifted = quality._score([np.roll(logits, 1, axis=0)], ids)  # off by one: confidently wrong
    assert math.exp(shifted.nll / shifted.count) > 1e6
