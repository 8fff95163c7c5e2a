"""Choosing K of several candidate maps by their mixture's evidence (map_selection)."""

from __future__ import annotations

import numpy as np
import pytest

from cryoviz.inference.map_selection import mixture_log_likelihood, select_maps


def test_select_maps_keeps_maps_that_explain_different_images():
    # images 0-9 are explained by candidates 0 and 1 (1 a copy of 0), images 10-19 by 2 only
    evidence = np.full((4, 20), -50.0)
    evidence[0, :10] = evidence[1, :10] = 0.0
    evidence[1, :10] += 0.1
    evidence[2, 10:] = 0.0
    evidence[3] = -5.0  # explains everything poorly
    assert select_maps(evidence, 2, groups=[[0, 1], [2, 3]]) == [1, 2]
    # an equal mixture: log((e^0 + e^-50) / 2) for every image
    assert mixture_log_likelihood(evidence, [0, 2]) == pytest.approx(
        np.log((1.0 + np.exp(-50.0)) / 2.0))
    # greedy alone picks the map that explains everything fairly (2) first; the swaps
    # replace it by the second specialist, whose pair with the first explains more
    generalist = np.array([[0.0, 0.0, -20.0, -20.0], [-20.0, -20.0, 0.0, 0.0],
                           [-1.0, -1.0, -1.0, -1.0]])
    assert mixture_log_likelihood(generalist, [0, 1]) > mixture_log_likelihood(generalist,
                                                                               [0, 2])
    assert select_maps(generalist, 2, groups=[]) == [0, 1]
