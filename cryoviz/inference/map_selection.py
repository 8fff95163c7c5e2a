"""Which K of several candidate maps explain a set of images best (equal mixture).

Used by :mod:`cryoviz.inference.abinit_classes` to pool the maps of several
restarts of the K-class initial models: each candidate's log evidence per image
is given, and the K kept are those whose equal mixture gives the images the
largest mean log evidence.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["mixture_log_likelihood", "select_maps"]


def mixture_log_likelihood(evidence: np.ndarray, chosen: list[int]) -> float:
    """Mean over images of ``log (1/K) sum_{c in chosen} exp(evidence[c, i])``.

    Parameters
    ----------
    evidence
        ``(C, M)`` log evidence of ``M`` images under each of ``C`` candidate maps.
    chosen
        The ``K`` candidates of the mixture (equal weights).
    """
    rows = torch.as_tensor(evidence[list(chosen)])
    return float((torch.logsumexp(rows, dim=0) - np.log(len(chosen))).mean())


def select_maps(evidence: np.ndarray, n_classes: int, groups: list[list[int]]) -> list[int]:
    """The ``n_classes`` candidate maps whose equal mixture explains the images best.

    Maximises :func:`mixture_log_likelihood` (a candidate that only repeats one
    already chosen adds little, so the maps kept explain different images) by
    local search: from the greedy forward choice and from every group of
    ``groups`` (each restart's own maps), one chosen map is swapped for one not
    chosen while that raises the figure; the best end point is returned, sorted.
    The greedy choice alone can be trapped by a map that explains every image
    fairly and no image well.

    Parameters
    ----------
    evidence
        ``(C, M)`` log evidence of ``M`` images under each candidate map.
    n_classes
        ``K``, at most ``C``.
    groups
        Candidate index lists of ``K`` each, also used as starting points.
    """
    def score(chosen: list[int]) -> float:
        return mixture_log_likelihood(evidence, chosen)

    def improve(chosen: list[int]) -> list[int]:
        current, best = sorted(chosen), score(chosen)
        improved = True
        while improved:
            improved = False
            for slot in range(n_classes):
                for c in range(len(evidence)):
                    if c in current:
                        continue
                    trial = sorted(current[:slot] + [c] + current[slot + 1:])
                    if (value := score(trial)) > best + 1e-12:
                        current, best, improved = trial, value, True
                        break
                if improved:
                    break
        return current

    greedy: list[int] = []
    for _ in range(n_classes):
        rest = [c for c in range(len(evidence)) if c not in greedy]
        greedy.append(max(rest, key=lambda c: score(greedy + [c])))
    return max((improve(start) for start in [greedy, *groups]), key=score)
