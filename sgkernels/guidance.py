"""Guidance rules as linear combinations of model branches (docs/design.md §2).

A *branch* is one model evaluation on the current x_t: `Branch(model, gamma, cond)`, with model
"main" or "weak" (a second, weaker checkpoint), gamma the token-drop rate (0 = dense) and cond
"cond" (the sample's label c) or "null" (the null class ∅). Every rule is affine in the model
outputs D, so it is applied to velocities as

    v = Σ_k a_k · D_k,        Σ_k a_k = 1,

and `terms(step, steps)` returns that list of (Branch, a_k): identical branches merged, branches
whose coefficient is zero dropped (|a_k| < 1e-12 counts as zero, the float residue of e.g.
1 − 0.7 − 0.3). The sampler (evaluation and packing), the FLOP counter (`branches`, duck-typed)
and the tests all read this one description. Notation: D_s(c) = D(x_t,t,c; γ_strong),
D_w(c) = D(x_t,t,c; γ_weak); each rule's formula is in the docstring of its class (Unguided,
CFG, AutoGuidance, SparseGuidance, CFGSparseGuidance).

With γ_strong = γ_weak (one model) the CFG+SG rules reduce to CFG with scale w_cfg (direct),
1 + w_cfg (inner), w_cfg + w_sg (compositional) and w_sg (ip2p).

direct, compositional and ip2p are one two-parameter family a D_s(c) + β D_w(c) + (1−a−β) D_w(∅)
in different coordinates: direct(w_cfg, w_sg) = ip2p(w_cfg + w_sg, w_cfg) covers β ≤ 0,
compositional(w_cfg, w_sg) = ip2p(w_cfg, w_cfg + w_sg) covers β ≥ 0, and ip2p both. With
non-negative weights, comparing them compares which part of the family each reaches; inner is
the only rule with another branch, D_s(∅).

Gammas accept a float or a `Schedule` (constant / linear / cosine from a to b over the steps).
`interval=(t_lo, t_hi)`: step i (t_i = i/steps, the step's start time; Heun's corrector reuses the
step's terms) is guided iff t_lo ≤ t_i ≤ t_hi; outside, one branch is evaluated: the plain
conditional branch of the main model at the strong setting (CFG: its gamma, dense by default;
AutoGuidance: dense; SG and CFG+SG: γ_strong).
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field
from typing import NamedTuple

MODELS = ("main", "weak")
CONDS = ("cond", "null")
RULES = ("direct", "inner", "compositional", "ip2p")
SCHEDULE_KINDS = ("constant", "linear", "cosine")
ZERO = 1e-12


def _real(value) -> bool:
    """A real number (Python, numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Branch(NamedTuple):
    """One model evaluation of a guided step: which model, at which drop rate, which label."""

    model: str
    gamma: float
    cond: str


@dataclass(frozen=True)
class Schedule:
    """A per-step value going from `start` (first step) to `end` (last step).

    With u = step / (steps − 1) (u = 0 for a single step):
        constant  start
        linear    start + (end − start)·u
        cosine    start + (end − start)·(1 − cos πu)/2
    Both non-constant kinds are monotone, so their values lie between start and end, which they
    hit exactly at the first and last step. Build one with Schedule.constant(v),
    Schedule.linear(a, b), Schedule.cosine(a, b) or Schedule.parse("cosine:a:b"); call it as
    schedule(step, steps) -> float.

    Args:
        kind: "constant", "linear" or "cosine".
        start: the value at the first step, a finite real number.
        end: the value at the last step (== start for "constant").

    Raises:
        TypeError: start or end not a real number (bools rejected).
        ValueError: an unknown kind; start or end not finite; a constant with start != end.
    """

    kind: str
    start: float
    end: float

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"Schedule.kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if not _real(value):
                raise TypeError(f"Schedule.{name} must be a float, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"Schedule.{name} must be finite, got {value}")
            object.__setattr__(self, name, float(value))
        if self.kind == "constant" and self.start != self.end:
            raise ValueError(f"a constant Schedule needs start == end, got {self.start}, "
                             f"{self.end}")

    @classmethod
    def constant(cls, value: float) -> Schedule:
        return cls("constant", value, value)

    @classmethod
    def linear(cls, start: float, end: float) -> Schedule:
        return cls("linear", start, end)

    @classmethod
    def cosine(cls, start: float, end: float) -> Schedule:
        return cls("cosine", start, end)

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """A Schedule from its command-line form.

        Args:
            text: '0.5' (constant), 'linear:a:b' or 'cosine:a:b'.

        Returns:
            The Schedule.

        Raises:
            ValueError: text is none of these forms.
        """
        parts = str(text).split(":")
        try:
            values = [float(p) for p in parts[-2:]] if len(parts) == 3 else [float(parts[0])]
        except ValueError:
            values = None
        if len(parts) == 1 and values:
            return cls.constant(values[0])
        if len(parts) == 3 and values and parts[0] in ("linear", "cosine"):
            return cls(parts[0], *values)
        raise ValueError(f"cannot parse schedule {text!r}: expected a number, 'linear:a:b' or "
                         f"'cosine:a:b'")

    def __call__(self, step: int, steps: int) -> float:
        """The value at step `step` (0-based) of a `steps`-step run (formula: the class)."""
        u = step / (steps - 1) if steps > 1 else 0.0
        if self.kind == "constant" or u == 0.0:
            return self.start
        if u >= 1.0:
            return self.end
        if self.kind == "linear":
            return self.start + (self.end - self.start) * u
        return self.start + (self.end - self.start) * 0.5 * (1.0 - math.cos(math.pi * u))


def as_gamma(value, name: str) -> Schedule:
    """A float or Schedule of drop rates in [0, 1), as a Schedule."""
    if isinstance(value, Schedule):
        schedule = value
    elif not _real(value):
        raise TypeError(f"{name} must be a float in [0, 1) or a Schedule, got "
                        f"{type(value).__name__}")
    else:
        schedule = Schedule.constant(float(value))
    for end in (schedule.start, schedule.end):
        if not 0.0 <= end < 1.0:
            raise ValueError(f"{name} must be in [0, 1) at every step, got {schedule}")
    return schedule


def check_scale(value, name: str) -> float:
    """A guidance weight: a finite real number >= 0."""
    if not _real(value):
        raise TypeError(f"{name} must be a float >= 0, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite float >= 0, got {value}")
    return float(value)


def check_interval(interval) -> tuple[float, float] | None:
    if interval is None:
        return None
    ok = isinstance(interval, (tuple, list)) and len(interval) == 2 and all(
        _real(v) for v in interval)
    if not ok:
        raise TypeError(f"interval must be None or a pair (t_lo, t_hi) of floats, got {interval!r}")
    lo, hi = float(interval[0]), float(interval[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"interval must satisfy 0 <= t_lo <= t_hi <= 1, got ({lo}, {hi})")
    return lo, hi


def _check_step(step, steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < steps:
        raise ValueError(f"step must be an int in [0, {steps}), got {step!r}")


def _in_interval(interval, step: int, steps: int) -> bool:
    """Whether step's start time t = step/steps lies in interval (None: every step)."""
    return interval is None or interval[0] <= step / steps <= interval[1]


def _set(obj, name: str, value) -> None:
    """Assign a validated field of a frozen guidance dataclass (in __post_init__ only)."""
    object.__setattr__(obj, name, value)


def merge_terms(raw) -> list[tuple[Branch, float]]:
    """Sum the coefficients of identical branches, keep first-seen order, drop zeros."""
    total: dict[Branch, float] = {}
    for branch, coef in raw:
        total[branch] = total.get(branch, 0.0) + coef
    return [(b, c) for b, c in total.items() if abs(c) >= ZERO]


class Guidance:
    """Base of the rules: subclasses define `_rule(step, steps)` and `_fallback(step, steps)`,
    and may have `interval` and `weak_model` attributes (absent means None)."""

    def _rule(self, step: int, steps: int) -> list[tuple[Branch, float]]:
        raise NotImplementedError

    def _fallback(self, step: int, steps: int) -> Branch:
        raise NotImplementedError

    def guided(self, step: int, steps: int) -> bool:
        """Whether step is inside the guidance interval."""
        _check_step(step, steps)
        return _in_interval(getattr(self, "interval", None), step, steps)

    def validate(self, steps: int) -> None:
        """Check every step of a `steps`-step run up front, before any model evaluation
        (`terms` and `sample` call it).

        Args:
            steps: the number of steps, an int >= 1.

        Raises:
            ValueError: steps not a positive int; γ_strong > γ_weak at some guided step
                (sparse rules without allow_inverted).
        """
        _check_step(0, steps)

    def terms(self, step: int, steps: int) -> list[tuple[Branch, float]]:
        """The guided velocity v = Σ_k a_k · D_k of one step, as its branches and coefficients.

        Args:
            step: the step, an int in [0, steps).
            steps: the number of steps of the run, an int >= 1.

        Returns:
            [(Branch(model, gamma, cond), a_k)]: identical branches merged, in first-seen order,
            zero coefficients dropped; Σ a_k = 1. Outside the interval: one branch, weight 1.

        Raises:
            ValueError: steps not a positive int; step not an int in [0, steps); γ_strong >
                γ_weak at some guided step of the run (sparse rules without allow_inverted).
        """
        self.validate(steps)
        if not self.guided(step, steps):
            return [(self._fallback(step, steps), 1.0)]
        return merge_terms(self._rule(step, steps))

    def branches(self, step: int, steps: int) -> list[Branch]:
        """The branches evaluated at this step (what the FLOP counter reads).

        Args:
            step, steps: as in `terms`.

        Returns:
            The Branch of every term of `terms(step, steps)`, in order.

        Raises:
            ValueError: as `terms`.
        """
        return [branch for branch, _ in self.terms(step, steps)]


@dataclass(frozen=True)
class Unguided(Guidance):
    """No guidance, what `guidance=None` means: v = D(c) at drop rate gamma.

    Args:
        gamma: the drop rate, a float in [0, 1) or a Schedule of them (default 0, dense).

    Raises:
        TypeError: gamma not a real number or Schedule.
        ValueError: gamma outside [0, 1) at some step.
    """

    gamma: float | Schedule = 0.0

    def __post_init__(self):
        _set(self, "gamma", as_gamma(self.gamma, "gamma"))

    def _fallback(self, step, steps):
        return Branch("main", self.gamma(step, steps), "cond")

    def _rule(self, step, steps):
        return [(self._fallback(step, steps), 1.0)]


@dataclass(frozen=True)
class CFG(Guidance):
    """Classifier-free guidance, both branches at drop rate gamma:

        v = D(∅) + ω(D(c) − D(∅)) = ω D(c) + (1−ω) D(∅)

    Args:
        scale: ω, a finite float >= 0.
        gamma: the drop rate of both branches, a float in [0, 1) or a Schedule (default 0).
        interval: (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1: the guided steps; None: all.

    Raises:
        TypeError: scale or gamma not a real number (gamma: or Schedule); interval not None
            or a pair of real numbers.
        ValueError: scale negative or not finite; gamma outside [0, 1); a bad interval.
    """

    scale: float
    gamma: float | Schedule = 0.0
    interval: tuple[float, float] | None = None

    def __post_init__(self):
        _set(self, "scale", check_scale(self.scale, "scale"))
        _set(self, "gamma", as_gamma(self.gamma, "gamma"))
        _set(self, "interval", check_interval(self.interval))

    def _fallback(self, step, steps):
        return Branch("main", self.gamma(step, steps), "cond")

    def _rule(self, step, steps):
        g, w = self.gamma(step, steps), self.scale
        return [(Branch("main", g, "cond"), w), (Branch("main", g, "null"), 1.0 - w)]


def _check_order(strong: float, weak: float, where: str) -> None:
    if strong > weak:
        raise ValueError(
            f"gamma_strong ({strong}) must be <= gamma_weak ({weak}) at {where}: the weak branch "
            f"drops more tokens; pass allow_inverted=True to allow it (e.g. when the weak branch "
            f"comes from an earlier checkpoint)")


@functools.lru_cache(maxsize=256)
def _check_schedule_order(strong: Schedule, weak: Schedule, steps: int, interval) -> None:
    """γ_strong(i) ≤ γ_weak(i) at every guided step i of `steps` (cached: O(steps) once)."""
    for i in range(steps):
        if _in_interval(interval, i, steps):
            _check_order(strong(i, steps), weak(i, steps), f"step {i} of {steps}")


class _SparseBase(Guidance):
    """Shared validation of γ_strong / γ_weak and the optional weak checkpoint."""

    def _init_sparse(self):
        _set(self, "gamma_strong", as_gamma(self.gamma_strong, "gamma_strong"))
        _set(self, "gamma_weak", as_gamma(self.gamma_weak, "gamma_weak"))
        _set(self, "interval", check_interval(self.interval))
        if not isinstance(self.allow_inverted, bool):
            raise TypeError(f"allow_inverted must be a bool, got "
                            f"{type(self.allow_inverted).__name__}")
        if not self.allow_inverted:         # the endpoints now; every step in validate(steps)
            _check_order(self.gamma_strong.start, self.gamma_weak.start, "the first step")
            _check_order(self.gamma_strong.end, self.gamma_weak.end, "the last step")

    def validate(self, steps: int) -> None:
        """γ_strong ≤ γ_weak at every guided step (schedules of different shapes can cross
        between their endpoints), unless allow_inverted."""
        super().validate(steps)
        if not self.allow_inverted:
            _check_schedule_order(self.gamma_strong, self.gamma_weak, steps, self.interval)

    def _gammas(self, step, steps) -> tuple[float, float]:
        return self.gamma_strong(step, steps), self.gamma_weak(step, steps)

    @property
    def _weak(self) -> str:
        return "main" if self.weak_model is None else "weak"

    def _fallback(self, step, steps):
        return Branch("main", self.gamma_strong(step, steps), "cond")


@dataclass(frozen=True)
class SparseGuidance(_SparseBase):
    """Sparse Guidance: the same model at two drop rates, the sparser one as the weak branch.

        v = D_w(c) + ω(D_s(c) − D_w(c)) = ω D_s(c) + (1−ω) D_w(c)

    Paper settings: `SparseGuidance.sg_flops(scale)` and `SparseGuidance.sg_fid(scale,
    early_model)`.

    Args:
        scale: ω, a finite float >= 0.
        gamma_strong: γ_strong of D_s, a float in [0, 1) or a Schedule.
        gamma_weak: γ_weak of D_w, a float in [0, 1) or a Schedule; >= γ_strong at every
            guided step unless allow_inverted.
        interval: (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1: the guided steps; None: all.
        weak_model: None (D_w from the main model) or a second model called like it (an
            early checkpoint; SG combined with AutoGuidance); a ModelConfig is enough for
            FLOP counting.
        allow_inverted: allow γ_strong > γ_weak (e.g. with a weak_model).

    Raises:
        TypeError: scale or a gamma not a real number (gamma: or Schedule); interval not None
            or a pair of real numbers; allow_inverted not a bool.
        ValueError: scale negative or not finite; a gamma outside [0, 1); a bad interval;
            γ_strong > γ_weak at the first or last step without allow_inverted (every step
            is checked by `validate(steps)`).
    """

    scale: float
    gamma_strong: float | Schedule
    gamma_weak: float | Schedule
    interval: tuple[float, float] | None = None
    weak_model: object = field(default=None, repr=False)
    allow_inverted: bool = False

    def __post_init__(self):
        _set(self, "scale", check_scale(self.scale, "scale"))
        self._init_sparse()

    @classmethod
    def sg_flops(cls, scale: float, interval=None) -> SparseGuidance:
        """The paper's FLOP-saving setting: one checkpoint, γ_strong 0.5, γ_weak 0.9.

        Args:
            scale: ω, a finite float >= 0.
            interval: as in the class.

        Returns:
            SparseGuidance(scale, 0.5, 0.9, interval=interval).

        Raises:
            TypeError, ValueError: as the class, for scale and interval.
        """
        return cls(scale, 0.5, 0.9, interval=interval)

    @classmethod
    def sg_fid(cls, scale: float, weak_model, gamma_max: float = 0.6,
               interval=None) -> SparseGuidance:
        """The paper's FID setting: the weak branch from an early checkpoint, inverted rates.

        γ_strong = Schedule.cosine(0, gamma_max), γ_weak = Schedule.cosine(gamma_max, 0)
        (allow_inverted=True).

        Args:
            scale: ω, a finite float >= 0.
            weak_model: the early checkpoint, called like the main model.
            gamma_max: the largest drop rate, in [0, 1).
            interval: as in the class.

        Returns:
            The SparseGuidance.

        Raises:
            ValueError: weak_model is None; and as the class, for scale, gamma_max, interval.
            TypeError: as the class.
        """
        if weak_model is None:
            raise ValueError("sg_fid needs weak_model (an early checkpoint of the model)")
        return cls(scale, Schedule.cosine(0.0, gamma_max), Schedule.cosine(gamma_max, 0.0),
                   interval=interval, weak_model=weak_model, allow_inverted=True)

    def _rule(self, step, steps):
        strong, weak = self._gammas(step, steps)
        w = self.scale
        return [(Branch("main", strong, "cond"), w), (Branch(self._weak, weak, "cond"), 1.0 - w)]


@dataclass(frozen=True)
class AutoGuidance(Guidance):
    """AutoGuidance: a weaker model as the weak branch, both dense, D_bad = weak_model:

        v = D_bad(c) + ω(D(c) − D_bad(c)) = ω D(c) + (1−ω) D_bad(c)

    Args:
        weak_model: a weaker or earlier model called like the main one (a ModelConfig is
            enough for FLOP counting).
        scale: ω, a finite float >= 0.
        interval: (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1: the guided steps; None: all.

    Raises:
        TypeError: scale not a real number; interval not None or a pair of real numbers.
        ValueError: weak_model is None; scale negative or not finite; a bad interval.
    """

    weak_model: object = field(repr=False)
    scale: float
    interval: tuple[float, float] | None = None

    def __post_init__(self):
        if self.weak_model is None:
            raise ValueError("AutoGuidance needs weak_model (a weaker or earlier model), got None")
        _set(self, "scale", check_scale(self.scale, "scale"))
        _set(self, "interval", check_interval(self.interval))

    def _fallback(self, step, steps):
        return Branch("main", 0.0, "cond")

    def _rule(self, step, steps):
        w = self.scale
        return [(Branch("main", 0.0, "cond"), w), (Branch("weak", 0.0, "cond"), 1.0 - w)]


@dataclass(frozen=True)
class CFGSparseGuidance(_SparseBase):
    """CFG combined with Sparse Guidance by one of four rules:

        direct         D_w(∅) + w_cfg(D_s(c) − D_w(∅)) + w_sg(D_s(c) − D_w(c))
                         = (w_cfg+w_sg) D_s(c) − w_sg D_w(c) + (1−w_cfg) D_w(∅)
        inner          (1+w_cfg+w_sg) D_s(c) − w_cfg D_s(∅) − w_sg D_w(c)
        compositional  D_w(∅) + w_cfg(D_s(c) − D_w(∅)) + w_sg(D_w(c) − D_w(∅))
                         = w_cfg D_s(c) + w_sg D_w(c) + (1−w_cfg−w_sg) D_w(∅)
        ip2p           D_w(∅) + w_sg(D_w(c) − D_w(∅)) + w_cfg(D_s(c) − D_w(c))
                         = w_cfg D_s(c) + (w_sg−w_cfg) D_w(c) + (1−w_sg) D_w(∅)

    (how the rules relate: the module docstring). Null branches need a class-conditional
    model (num_classes > 0) or a null caption (text models).

    Args:
        cfg_scale: w_cfg, a finite float >= 0.
        sg_scale: w_sg, a finite float >= 0.
        gamma_strong, gamma_weak, interval, weak_model, allow_inverted: as in SparseGuidance.
        rule: "direct", "inner", "compositional" or "ip2p".

    Raises:
        TypeError: as SparseGuidance, for either scale.
        ValueError: as SparseGuidance, for either scale; an unknown rule.
    """

    cfg_scale: float
    sg_scale: float
    gamma_strong: float | Schedule
    gamma_weak: float | Schedule
    rule: str = "direct"
    interval: tuple[float, float] | None = None
    weak_model: object = field(default=None, repr=False)
    allow_inverted: bool = False

    def __post_init__(self):
        _set(self, "cfg_scale", check_scale(self.cfg_scale, "cfg_scale"))
        _set(self, "sg_scale", check_scale(self.sg_scale, "sg_scale"))
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        self._init_sparse()

    def _rule(self, step, steps):
        strong, weak = self._gammas(step, steps)
        wc, ws = self.cfg_scale, self.sg_scale
        s_c = Branch("main", strong, "cond")
        w_c, w_n = Branch(self._weak, weak, "cond"), Branch(self._weak, weak, "null")
        if self.rule == "direct":
            return [(s_c, wc + ws), (w_c, -ws), (w_n, 1.0 - wc)]
        if self.rule == "inner":
            return [(s_c, 1.0 + wc + ws), (Branch("main", strong, "null"), -wc), (w_c, -ws)]
        if self.rule == "compositional":
            return [(s_c, wc), (w_c, ws), (w_n, math.fsum((1.0, -wc, -ws)))]
        return [(s_c, wc), (w_c, ws - wc), (w_n, 1.0 - ws)]


__all__ = ["Branch", "Schedule", "Guidance", "Unguided", "CFG", "AutoGuidance", "SparseGuidance",
           "CFGSparseGuidance", "RULES"]
