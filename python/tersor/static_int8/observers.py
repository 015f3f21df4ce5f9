"""Activation observers of the static int8 pipeline: one symmetric scale per tensor, chosen
from calibration batches (the codes are s8 with zero point 0; a ReLU's output uses 0..127).

- ``minmax``: the largest |x| seen (no clipping; one outlier costs every other value bits);
- ``percentile``: the |x| below which `percentile` % of the values lie;
- ``mse``: the clipping threshold that minimizes the expected squared error of the codes,
  rounding (step^2 / 12 per value inside) plus clipping ((|x| - t)^2 per value outside),
  searched over a histogram of |x|.

Histograms need the range first, so percentile and mse take two passes over the batches
(``needs_histogram``): pass one finds each tensor's amax, pass two fills 2048 bins over it.
"""

from __future__ import annotations

import torch

from tersor.ops._common import QMAX

OBSERVERS = ("minmax", "percentile", "mse")
BINS = 2048


class Observer:
    def __init__(self, kind: str, percentile: float = 99.99):
        self.kind, self.percentile = kind, percentile
        self.amax = 0.0
        self.min = float("inf")
        self.hist = None
        self.shapes = set()  # every shape seen: a residual add fuses only between equal ones

    @property
    def needs_histogram(self) -> bool:
        return self.kind != "minmax"

    def observe_range(self, x: torch.Tensor) -> None:
        self.shapes.add(tuple(x.shape))
        if x.numel():
            x = x.detach()
            finite = x[torch.isfinite(x)] if not bool(torch.isfinite(x).all()) else x
            if finite.numel():
                self.amax = max(self.amax, float(finite.abs().max()))
                self.min = min(self.min, float(finite.min()))

    def observe_histogram(self, x: torch.Tensor) -> None:
        if self.amax <= 0 or not x.numel():
            return
        h = torch.histc(x.detach().abs().float().flatten(), BINS, 0.0, self.amax)
        self.hist = h if self.hist is None else self.hist + h

    @property
    def non_negative(self) -> bool:
        return self.min >= 0.0

    def threshold(self) -> float:
        """The |x| that maps to code 127."""
        if self.amax <= 0:
            return 1.0  # all zeros (or never seen): any scale gives code 0
        if self.kind == "minmax" or self.hist is None or float(self.hist.sum()) == 0:
            return self.amax
        h = self.hist.double()
        width = self.amax / BINS
        centers = (torch.arange(BINS, dtype=torch.float64) + 0.5) * width
        if self.kind == "percentile":
            cdf = torch.cumsum(h, 0) / h.sum()
            i = int(
                torch.searchsorted(cdf, torch.tensor(self.percentile / 100.0)).clamp(max=BINS - 1)
            )
            return float((i + 1) * width)
        # mse: candidate thresholds at bin edges from amax / 64 up to amax. Candidate t = j *
        # width has bins 0 .. j - 1 inside (their centres below t) and j .. BINS - 1 clipped:
        #   rounding(t) = (t / 127)^2 / 12 * sum_inside h
        #   clipping(t) = sum_clipped h (c - t)^2 = S2 - 2 t S1 + t^2 S0   (suffix sums of h,
        #                 h c, h c^2 from bin j), O(BINS) where the candidates x bins matrices
        #                 took 130 MB of float64 temporaries per tensor
        j = torch.arange(BINS // 64, BINS + 1)
        cand = j.double() * width
        zero = torch.zeros(1, dtype=torch.float64)

        def suffix(v):  # sum over bins j .. BINS - 1, for each candidate j
            return torch.cat([torch.flip(torch.cumsum(torch.flip(v, [0]), 0), [0]), zero])[j]

        s0, s1, s2 = suffix(h), suffix(h * centers), suffix(h * centers**2)
        rounding = (h.sum() - s0) * (cand / QMAX) ** 2 / 12
        clipping = s2 - 2 * cand * s1 + cand**2 * s0
        return float(cand[int(torch.argmin(rounding + clipping))])

    def scale(self) -> float:
        return self.threshold() / QMAX
