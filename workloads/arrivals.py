"""Synthetic arrival processes and rate shapes, vectorised with numpy.

Every process here, and the MAF trace replay in traces.py, is built from one
primitive, `cell_arrivals`: renewal arrivals (constant, exponential or Gamma
gaps) on "cells", stretches of time with a constant rate each.

- constant / poisson / gamma: one cell per model spanning the whole run.
- mmpp: per model, one cell per sojourn of a two-state Markov chain.
- ramp / diurnal shapes: the process is generated in warped time s = Λ(t),
  Λ the integral of the rate multiplier, and mapped back through Λ⁻¹ with
  np.interp. Arrivals at unit density in s have density Λ'(t) in t, so this
  works unchanged for every process (MMPP sojourns are then in warped time).
"""

import numpy as np

from harness.errors import HarnessError

# Most requests (or cells, Λ-grid points) one schedule may hold. Building it
# peaks at about 90 bytes per request (measured with tracemalloc: drawn gaps,
# cumsums, indices, the final table), so the cap keeps that near 4.5 GB; the
# runtimes then keep a few hundred bytes more per request. Beyond it a typo
# (a rate, duration or scale 1000x too large) is far likelier than intent,
# and numpy would fail with an allocation error of hundreds of GiB instead.
MAX_REQUESTS = 50_000_000


def check_schedule_size(expected: float, what: str, fix: str) -> None:
    """Refuse before allocating a schedule of about `expected` rows (NaN or inf included)."""
    if not expected <= MAX_REQUESTS:
        raise HarnessError(
            f"the schedule would hold about {expected:.3g} {what} (> {MAX_REQUESTS:.0e}, the memory cap); {fix}"
        )


def expected_requests(cfg, duration: float) -> float:
    """Mean number of arrivals of a synthetic process over `duration`.

    Diurnal and MMPP keep the mean rate at cfg.rate; a ramp averages its ends.
    """
    if cfg.shape == "ramp":
        return cfg.rate * duration * (cfg.ramp_start + cfg.ramp_end) / 2
    return cfg.rate * duration


# Gaps drawn per cell in one round: 10% over the mean need plus three
# standard deviations, so almost every cell is covered in the first round.
_DRAW_MARGIN = 1.1

# Points per diurnal period on the Λ grid; linear interpolation of Λ between
# them leaves the rate within a fraction of a percent of the sine.
_GRID_PER_PERIOD = 64
_MIN_GRID = 4097


def _gaps(rng: np.random.Generator, cv: float, n: int) -> np.ndarray:
    """n renewal gaps with mean 1 and coefficient of variation cv."""
    if cv == 0:
        return np.ones(n)
    if cv == 1:
        return rng.standard_exponential(n)
    k = 1.0 / cv**2
    return rng.gamma(k, 1.0 / k, n)


def _first_arrivals(rng: np.random.Generator, cv: float, n: int) -> np.ndarray:
    """First arrival of n unit-rate renewal processes started in steady state.

    The time to the first arrival of a stationary renewal process is a uniform
    fraction of a length-biased gap (Gamma(k+1) for Gamma(k) gaps). Starting
    each cell right after an arrival instead (as AlpaServe does) adds about
    (cv^2 - 1) / 2 arrivals per cell: +7.5 per window at CV 4.
    """
    if cv == 0:
        biased = np.ones(n)
    else:
        k = 1.0 / cv**2
        biased = rng.gamma(k + 1.0, 1.0 / k, n)
    return rng.random(n) * biased


def cell_arrivals(
    rng: np.random.Generator,
    starts: np.ndarray,
    spans: np.ndarray,
    rates: np.ndarray,
    cv: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Arrivals of a stationary renewal process in each cell [start, start + span).

    Cell i has constant rate rates[i] and gaps with coefficient of variation
    cv (0 = evenly spaced with a random phase, 1 = Poisson, else Gamma).
    Returns (cell index, time) per arrival, unsorted.
    """
    starts, spans, rates = (np.asarray(a, dtype=float) for a in (starts, spans, rates))
    # Work in unit-rate time: cell i is [0, length[i]) with mean gap 1.
    length = spans * rates
    pos = _first_arrivals(rng, cv, len(length))
    active = np.flatnonzero(pos < length)
    cells, units = [active], [pos[active]]
    while active.size:
        # Draw a block of gaps per active cell, cumsum within each block.
        need = length[active] - pos[active]
        n = (np.ceil(need * _DRAW_MARGIN + 3 * cv * np.sqrt(need)) + 1).astype(np.int64)
        gaps = _gaps(rng, cv, int(n.sum()))
        ends = np.cumsum(n)
        csum = np.cumsum(gaps)
        before = csum[ends - n] - gaps[ends - n]  # running sum before each block
        u = csum - np.repeat(before - pos[active], n)
        cell = np.repeat(active, n)
        keep = u < length[cell]
        cells.append(cell[keep])
        units.append(u[keep])
        # Cells whose block ended inside the cell continue from its last arrival.
        pos[active] = u[ends - 1]
        active = active[pos[active] < length[active]]
    cell = np.concatenate(cells)
    return cell, starts[cell] + np.concatenate(units) / rates[cell]


def rate_warp(cfg, duration: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Grid (t, Λ(t)) of the integrated rate multiplier; None for a flat shape.

    ramp: multiplier rises linearly from ramp_start to ramp_end (so the mean
    rate is rate * (ramp_start + ramp_end) / 2). diurnal: 1 + A sin(2πt/P - π/2),
    rescaled so Λ(duration) = duration, i.e. the mean rate stays `rate` even
    over a partial period.
    """
    shape = cfg.shape
    if shape == "flat":
        return None
    n = _MIN_GRID
    if shape == "diurnal":
        points = _GRID_PER_PERIOD * duration / cfg.diurnal_period_s + 1
        check_schedule_size(points, "points of its diurnal rate grid",
                            "raise workload.diurnal_period_s or lower duration_s")
        n = max(n, int(points))
    t = np.linspace(0.0, duration, n)
    if shape == "ramp":
        m = cfg.ramp_start + (cfg.ramp_end - cfg.ramp_start) * t / duration
    else:
        m = 1.0 + cfg.diurnal_amplitude * np.sin(2 * np.pi * t / cfg.diurnal_period_s - np.pi / 2)
    lam = np.concatenate(([0.0], np.cumsum((m[1:] + m[:-1]) / 2 * np.diff(t))))
    if shape == "diurnal":
        lam *= duration / lam[-1]
    return t, lam


def _mmpp_cells(cfg, rates: np.ndarray, span: float, rng: np.random.Generator):
    """Sojourn cells (model, start, span, rate) of a two-state MMPP per model.

    The low-state rate `base` is set so the long-run mean is the model's rate:
    p_high * factor * base + (1 - p_high) * base = rate.
    """
    mean_high, mean_low = cfg.mmpp_mean_high_s, cfg.mmpp_mean_low_s
    p_high = mean_high / (mean_high + mean_low)
    check_schedule_size(len(rates) * 2 * span / (mean_high + mean_low), "MMPP sojourns",
                        "raise workload.mmpp_mean_high_s and workload.mmpp_mean_low_s or lower duration_s")
    pairs = int(span / (mean_high + mean_low) * 1.2) + 8  # high+low sojourns per draw
    out = []
    for model, rate in enumerate(rates):
        base = rate / (p_high * cfg.mmpp_high_factor + 1.0 - p_high)
        start_high = rng.random() < p_high  # stationary initial state
        lengths = []
        total = 0.0
        while total < span:
            pair = np.stack([rng.exponential(mean_high, pairs), rng.exponential(mean_low, pairs)], axis=1)
            chunk = pair.ravel() if start_high else pair[:, ::-1].ravel()
            lengths.append(chunk)
            total += chunk.sum()
        lengths = np.concatenate(lengths)
        high = np.arange(len(lengths)) % 2 == (0 if start_high else 1)
        begin = np.cumsum(lengths) - lengths
        inside = begin < span
        begin, high = begin[inside], high[inside]
        end = np.minimum(begin + lengths[inside], span)
        out.append((np.full(len(begin), model), begin, end - begin, np.where(high, base * cfg.mmpp_high_factor, base)))
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def synthetic_arrivals(cfg, weights: np.ndarray, duration: float, rng: np.random.Generator):
    """(model index, time) of every arrival of a synthetic process, unsorted.

    Model m gets an independent stream at cfg.rate * weights[m].
    """
    fix = "lower workload.rate or duration_s" + (" (or workload.ramp_start / ramp_end)" if cfg.shape == "ramp" else "")
    check_schedule_size(expected_requests(cfg, duration), "requests", fix)
    warp = rate_warp(cfg, duration)
    span = duration if warp is None else warp[1][-1]  # run length in warped time
    rates = cfg.rate * weights
    if cfg.process == "mmpp":
        model, starts, spans, cell_rates = _mmpp_cells(cfg, rates, span, rng)
        cv = 1.0
    else:
        model = np.arange(len(rates))
        starts, spans, cell_rates = np.zeros(len(rates)), np.full(len(rates), span), rates
        cv = {"constant": 0.0, "poisson": 1.0, "gamma": cfg.cv}[cfg.process]
    cell, t = cell_arrivals(rng, starts, spans, cell_rates, cv)
    if warp is not None:
        t = np.interp(t, warp[1], warp[0])
    keep = t < duration  # rounding at the end of the span
    return model[cell][keep], t[keep]
