"""Racing's rule: seeds are added round by round only to the variants whose answer is still open,
with the family's error spent across rounds so that stopping early cannot inflate it.

Schedule: round r = 1…K runs seeds 0…n_r−1 of every undecided variant and of its baseline,
n_r = seeds_min + (r−1)·seeds_step, K = ⌊(seeds_max − seeds_min)/seeds_step⌋ + 1.

Rule, after each round (valid under any stopping: a union bound over rounds, Holm within one):
- the family is every variant of the grid (m fixed); decided variants keep their decision and
  stay in it (as never rejected again, which only makes Holm stricter for the others);
- error per round: α/(2(K−1)) at each interim round, α/2 at the last (α when K = 1);
- ``better``/``worse``: the report's two-sided Welch test rejected by Holm at α_r;
- ``equivalent``: the TOST p-value (the larger of the two one-sided Welch tests against
  ±target_delta), Holm at α_r over the same m; both at once reads "better (below target_delta)";
- after the last round, the rest are ``undecided at budget``. Decisions are final.

Pure statistics over arrays (the sweeper, the report and the simulation all run this code); the
sweeper (:mod:`dat_exp.racing`) launches the jobs and reads their results from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import stats

from dat_exp.analysis.stats import ALPHA, Verdict, decide, welch

# the mark the report puts on the Δ of a variant decided before the last round
STOPPED_EARLY = {
    True: "stopped early: estimate biased away from 0",  # better / worse
    False: "stopped early: estimate biased toward 0",  # equivalent
}
BELOW_TARGET = " (below target_delta)"


class Outcome(StrEnum):
    """Where a variant of a race stands."""

    OPEN = "open"  # still racing
    BETTER = Verdict.BETTER.value
    WORSE = Verdict.WORSE.value
    EQUIVALENT = Verdict.EQUIVALENT.value
    UNDECIDED = "undecided at budget"  # still open after the last round
    FAILED = "failed"  # a seed failed twice: the variant has no answer


@dataclass(frozen=True)
class RacingSettings:
    """The sweeper's parameters (``hydra.sweeper.*``); ``target_delta`` has no default."""

    seeds_min: int = 3
    seeds_max: int = 8
    seeds_step: int = 1
    alpha: float = ALPHA
    target_delta: float | None = None  # the smallest difference of the metric worth knowing

    def problems(self) -> list[str]:
        """Every bad setting, one phrase each naming the value and what is valid."""
        out = []
        if self.seeds_min < 2:
            out.append(f"seeds_min={self.seeds_min}: must be at least 2 (a test needs 2 seeds)")
        if self.seeds_max < self.seeds_min:
            out.append(f"seeds_max={self.seeds_max}: must be at least seeds_min={self.seeds_min}")
        if self.seeds_step < 1:
            out.append(f"seeds_step={self.seeds_step}: must be at least 1")
        if not 0 < self.alpha < 1:
            out.append(f"alpha={self.alpha}: must be in (0, 1)")
        if self.target_delta is None:
            out.append(
                "target_delta is required: the smallest difference of the metric worth knowing "
                "(e.g. hydra.sweeper.target_delta=0.005 for 0.5 mAP points)"
            )
        elif not self.target_delta > 0:
            out.append(f"target_delta={self.target_delta}: must be > 0")
        return out

    @property
    def rounds(self) -> int:
        """K, the number of rounds at most."""
        return (self.seeds_max - self.seeds_min) // self.seeds_step + 1

    def seeds(self, round_: int) -> int:
        """n_r: the seeds each undecided variant and its baseline have after round ``round_``."""
        return self.seeds_min + (round_ - 1) * self.seeds_step

    def round_alpha(self, round_: int) -> float:
        """α_r: the error this round may spend."""
        if self.rounds == 1:
            return self.alpha
        if round_ == self.rounds:
            return self.alpha / 2
        return self.alpha / (2 * (self.rounds - 1))


def holm(p: np.ndarray, alpha: float, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down over the last axis at ``alpha`` in a family of ``m`` (NaN p: not tested,
    ranked last). Returns ``(rejected, threshold)``: each test's threshold α/(m − rank)."""
    p = np.where(np.isfinite(p), p, np.inf)
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    ranks = np.arange(p.shape[-1])
    ranked_threshold = alpha / np.maximum(m - ranks, 1)
    # reject the smallest p-values while each is under its threshold; stop at the first one not
    ranked_rejected = np.cumprod(ranked <= ranked_threshold, axis=-1).astype(bool)
    rejected = np.empty_like(ranked_rejected)
    threshold = np.empty(p.shape, float)
    np.put_along_axis(rejected, order, ranked_rejected, axis=-1)
    np.put_along_axis(threshold, order, np.broadcast_to(ranked_threshold, p.shape), axis=-1)
    return rejected, threshold


def tost_p(delta: np.ndarray, se: np.ndarray, df: np.ndarray, target: float) -> np.ndarray:
    """The TOST p-value of |Δ| < target: the larger of the two one-sided Welch p-values."""
    with np.errstate(all="ignore"):
        below = stats.t.sf((delta + target) / se, df)  # H0: Δ ≤ −target
        above = stats.t.sf((target - delta) / se, df)  # H0: Δ ≥ +target
    return np.maximum(below, above)


@dataclass(frozen=True)
class RoundArrays:
    """One round's tests over the last axis (the family): Δ, p, threshold, what was decided."""

    delta: np.ndarray
    p: np.ndarray
    threshold: np.ndarray  # Holm's threshold of the two-sided p at this round
    rejected: np.ndarray  # better or worse, decided now
    equivalent: np.ndarray  # equivalent (possibly also rejected), decided now


def race_round(
    variant: np.ndarray,
    baseline: np.ndarray,
    open_: np.ndarray,
    alpha_r: float,
    target_delta: float,
) -> RoundArrays:
    """Test the ``open_`` variants of a family (the last axis of ``open_``; seeds on the last
    axis of ``variant`` and ``baseline``) at α_r. Only open variants can be decided; the family
    size is the whole family's."""
    delta, se, df, p = welch(variant, baseline)
    m = open_.shape[-1]
    p_open = np.where(open_, p, np.nan)
    rejected, threshold = holm(p_open, alpha_r, m)
    equivalent, _ = holm(np.where(open_, tost_p(delta, se, df, target_delta), np.nan), alpha_r, m)
    return RoundArrays(delta, p, threshold, rejected & open_, equivalent & open_)


def outcome(delta: float, rejected: bool, equivalent: bool, higher_is_better: bool) -> Outcome:
    """The decision word of one variant decided this round (or OPEN)."""
    if rejected:
        return Outcome.BETTER if (delta > 0) == higher_is_better else Outcome.WORSE
    return Outcome.EQUIVALENT if equivalent else Outcome.OPEN


def decision_text(decision: Outcome, rejected: bool, equivalent: bool) -> str:
    """``better (below target_delta)`` where a rejected variant is also equivalent."""
    return decision.value + (BELOW_TARGET if rejected and equivalent else "")


# -- simulation: what racing saves and what it risks -------------------------------------------
@dataclass(frozen=True)
class Simulation:
    """Per simulated sweep: jobs run (baseline included), and the count of wrong decisions."""

    jobs: np.ndarray  # (sweeps,)
    false_rejections: np.ndarray  # better/worse where the true Δ is 0, or of the wrong sign
    wrong: np.ndarray  # those, plus `equivalent` where |true Δ| ≥ target_delta
    full_grid_jobs: int  # (variants + 1) · seeds_max


def draw(
    effects: np.ndarray, seeds: int, sweeps: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(variants, baseline)``: per sweep and seed, values around the true Δ (and 0) with
    Gaussian noise of σ = 1 (effects and targets are in units of σ)."""
    baseline = rng.normal(0.0, 1.0, (sweeps, 1, seeds))
    variants = effects[:, None] + rng.normal(0.0, 1.0, (sweeps, len(effects), seeds))
    return variants, baseline


def simulate(
    effects: np.ndarray, settings: RacingSettings, sweeps: int, rng: np.random.Generator
) -> Simulation:
    """Race ``sweeps`` times a family of variants with true Δ ``effects`` (in σ) against one
    baseline (a higher value is better)."""
    effects = np.asarray(effects, float)
    variants, baseline = draw(effects, settings.seeds(settings.rounds), sweeps, rng)
    open_ = np.ones(variants.shape[:2], bool)
    seeds_run = np.zeros(open_.shape, int)
    rejected = np.zeros_like(open_)
    equivalent = np.zeros_like(open_)
    positive = np.zeros_like(open_)
    baseline_seeds = np.zeros(sweeps, int)
    for r in range(1, settings.rounds + 1):
        n = settings.seeds(r)
        seeds_run[open_] = n
        baseline_seeds[open_.any(axis=-1)] = n
        target = float(settings.target_delta)
        tested = race_round(
            variants[..., :n], baseline[..., :n], open_, settings.round_alpha(r), target
        )
        rejected |= tested.rejected
        equivalent |= tested.equivalent
        positive = np.where(tested.rejected, tested.delta > 0, positive)
        open_ &= ~(tested.rejected | tested.equivalent)
    false_rejections, wrong = _errors(effects, rejected, positive, equivalent, settings)
    return Simulation(
        seeds_run.sum(axis=-1) + baseline_seeds,
        false_rejections,
        wrong,
        (len(effects) + 1) * settings.seeds_max,
    )


def simulate_full_grid(
    effects: np.ndarray, settings: RacingSettings, sweeps: int, rng: np.random.Generator
) -> Simulation:
    """The same family without racing: every variant at seeds_max, decided once by the report's
    rule (:func:`dat_exp.analysis.stats.decide`: Bonferroni at α, TOST at the same level)."""
    effects = np.asarray(effects, float)
    variants, baseline = draw(effects, settings.seeds_max, sweeps, rng)
    delta, se, df, p = welch(variants, baseline)
    family = decide(delta, se, df, p, settings.alpha, settings.target_delta)
    false_rejections, wrong = _errors(
        effects, family.significant, delta > 0, family.equivalent, settings
    )
    jobs = (len(effects) + 1) * settings.seeds_max
    return Simulation(np.full(sweeps, jobs), false_rejections, wrong, jobs)


def _errors(
    effects: np.ndarray,
    rejected: np.ndarray,
    positive: np.ndarray,
    equivalent: np.ndarray,
    settings: RacingSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Per sweep: false better/worse (true Δ 0, or the wrong sign), and all wrong decisions
    (those plus `equivalent` where |true Δ| ≥ target_delta)."""
    false_rejection = rejected & ((effects == 0) | (positive != (effects > 0)))
    wrong_equivalent = equivalent & ~rejected & (np.abs(effects) >= settings.target_delta)
    return false_rejection.sum(axis=-1), false_rejection.sum(axis=-1) + wrong_equivalent.sum(
        axis=-1
    )


# The README's simulated family: 12 variants, 4 with a true Δ of 2σ and 8 with none; seeds 2…8.
README_EFFECTS = (2.0,) * 4 + (0.0,) * 8


def savings_table(
    targets: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0),
    sweeps: int = 500,
    seed: int = 0,
) -> list[str]:
    """The README's table: jobs against the full grid and wrong decisions, by target_delta/σ."""
    effects = np.array(README_EFFECTS)
    lines = [
        "| target_delta/σ | jobs / full grid | P(any false better/worse) | wrong decisions, "
        "racing | wrong decisions, full grid |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in targets:
        settings = RacingSettings(2, 8, 1, ALPHA, target)
        race = simulate(effects, settings, sweeps, np.random.default_rng(seed))
        grid = simulate_full_grid(effects, settings, sweeps, np.random.default_rng(seed))
        lines.append(
            f"| {target:g} | {race.jobs.mean() / race.full_grid_jobs:.2f} | "
            f"{(race.false_rejections > 0).mean():.3f} | {race.wrong.mean():.3f} | "
            f"{grid.wrong.mean():.3f} |"
        )
    return lines
