"""The safety policy, in one place: what is unsafe, and what each search mode does to a query.

Every front end (Python API, CLI, index search, HTTP service, evaluation) asks :class:`SafetyPolicy` and nothing
else for these decisions:

* **verdict** — an input of modality ``m`` is unsafe iff its safety score (geodesic distance from the origin)
  exceeds the model's threshold for ``m`` (:meth:`SafetyPolicy.threshold`, fitted on validation data);
* **modes** (:class:`Mode`) — ``off`` searches the query as it is; ``filter`` drops results above the target
  modality's threshold; ``redirect`` pulls the query in along its geodesic through the origin to the target
  modality's **redirect radius** before searching; ``redirect+filter`` does both; ``seek-unsafe`` pushes it out to
  the target's **seek-unsafe radius** (how a moderator hunts unsafe content);
* **radii** — redirect: the model's traversal rule on the target's safe class (``rule: official`` →
  ``τ = b + tanh((b − α)/c) + 1``, ``rule: bound`` → ``b + margin``, with ``b`` the class's 95th percentile);
  seek-unsafe: the mean distance of the target's unsafe class. Queries already on the right side of the radius do
  not move (:class:`Moved` says which did);
* **trigger** — which queries ``redirect`` moves: ``trigger: radius`` (the default) moves every query beyond the
  radius; ``trigger: threshold`` moves only queries judged unsafe by their *own* modality's threshold, so a safe
  query is searched as it is and keeps its results. The trigger applies wherever the query's modality is known
  (search, ``hysac traverse``, ``/traverse``, evaluation); ``model.traverse_to_safe_*`` apply it when given
  ``query=``, and without it move every point beyond the radius.

The geometry itself (:func:`hysac.safety.traverse`) stays in :mod:`hysac.safety`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
from torch import Tensor

from . import safety as S
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .model import HySAC

Modality = S.Modality
MODALITIES: tuple[str, ...] = S.MODALITIES


class Mode(str, Enum):
    """Search safety modes (their values are what the CLI, the API and the web page accept)."""

    OFF = "off"
    FILTER = "filter"
    REDIRECT = "redirect"
    REDIRECT_FILTER = "redirect+filter"
    SEEK_UNSAFE = "seek-unsafe"

    @property
    def direction(self) -> Literal["in", "out"] | None:
        """How the query moves before the search: ``"in"`` (toward the origin), ``"out"``, or ``None``."""
        if self in (Mode.REDIRECT, Mode.REDIRECT_FILTER):
            return "in"
        return "out" if self is Mode.SEEK_UNSAFE else None

    @property
    def filters(self) -> bool:
        """Whether results above the target modality's unsafe threshold are dropped."""
        return self in (Mode.FILTER, Mode.REDIRECT_FILTER)

    @classmethod
    def parse(cls, value: "Mode | str") -> "Mode":
        """A :class:`Mode` from its value; anything else → :class:`InputError` listing the modes."""
        if isinstance(value, Mode):
            return value
        try:
            return cls(str(value))
        except ValueError:
            raise InputError(f"unknown search mode {value!r}; use one of {', '.join(MODES)}") from None

    @classmethod
    def for_direction(cls, direction: str) -> "Mode":
        """The mode whose move is ``direction`` (``"in"`` → redirect, ``"out"`` → seek-unsafe)."""
        if direction == "in":
            return cls.REDIRECT
        if direction == "out":
            return cls.SEEK_UNSAFE
        raise InputError(f"unknown traversal direction {direction!r}; use 'in' or 'out'")


MODES: tuple[str, ...] = tuple(m.value for m in Mode)


def over_threshold(scores: Any, threshold: Any) -> Any:
    """The verdict rule itself: unsafe iff score > θ. Works on floats, numpy arrays and tensors alike (the index
    applies it to stored scores, the service to single queries)."""
    return scores > threshold


RULES: tuple[str, ...] = ("official", "bound")
TRIGGERS: tuple[str, ...] = ("radius", "threshold")


def check_traversal(rule: Any, what: str = "traversal rule") -> dict[str, Any]:
    """A copy of a traversal rule ``{"rule": "official"|"bound", "alpha": a, "margin": m, "trigger": t}`` after
    checking it (keys optional; ``trigger`` ``"radius"`` or ``"threshold"``), else one :class:`InputError` line."""
    if not isinstance(rule, dict):
        raise InputError(f"{what} must be a mapping like {{rule: bound, margin: 0.0}}, got {rule!r}")
    unknown = sorted(set(rule) - {"rule", "alpha", "margin", "trigger"})
    if unknown:
        raise InputError(f"{what}: unknown key(s) {', '.join(map(str, unknown))}; known: rule, alpha, margin, trigger")
    if rule.get("rule", "official") not in RULES:
        raise InputError(f"{what}: rule must be one of {', '.join(RULES)}, got {rule.get('rule')!r}")
    if rule.get("trigger", "radius") not in TRIGGERS:
        raise InputError(f"{what}: trigger must be one of {', '.join(TRIGGERS)}, got {rule.get('trigger')!r}")
    for key in ("alpha", "margin"):
        v = rule.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{what}: {key} must be a finite number, got {v!r}")
    return dict(rule)


def check_modality(value: Any, what: str = "modality") -> str:
    """``value`` if it is ``"text"`` or ``"image"``, else :class:`InputError` naming ``what``."""
    if value not in MODALITIES:
        raise InputError(f"unknown {what} {value!r}; use 'text' or 'image'")
    return str(value)


@dataclass(frozen=True)
class Moved:
    """Query points after a mode's move. ``points`` (B,D), ``moved`` (B,) bool, ``radius`` the target distance
    from the origin (``None`` for modes that do not move), ``direction`` ``"in"`` / ``"out"`` / ``None``."""

    points: Tensor
    moved: Tensor
    radius: float | None
    direction: Literal["in", "out"] | None
    #: (B,) bool: queries beyond the radius that the ``threshold`` trigger left in place (judged safe); None when
    #: no trigger applied
    judged_safe: Tensor | None = None

    def describe(self, i: int = 0) -> str:
        """What happened to query ``i``, in words (the web page's status line uses the same text)."""
        if self.radius is None:
            return "searched as is"
        side = "inside" if self.direction == "in" else "outside"
        verb = "pulled in" if self.direction == "in" else "pushed out"
        if bool(self.moved[i]):
            return f"{verb} to radius {self.radius:.3f}"
        if self.judged_safe is not None and bool(self.judged_safe.reshape(-1)[i]):
            return "not moved (judged safe: searched as is)"
        return f"not moved (already {side} radius {self.radius:.3f})"


@dataclass(frozen=True)
class Verdicts:
    """Per-input decisions for one modality: ``scores`` (B,), ``unsafe`` (B,) bool, the ``threshold`` used and
    ``categories`` (B,7) probabilities in :data:`hysac.safety.CATEGORIES` order (``None`` without a head)."""

    scores: Tensor
    unsafe: Tensor
    threshold: float
    categories: Tensor | None

    def category_dict(self, i: int) -> dict[str, float]:
        if self.categories is None:
            return {}
        return {name: round(float(p), 4) for name, p in zip(S.CATEGORIES, self.categories[i])}


class SafetyPolicy:
    """The decisions of one model (read live from it: re-fitted bounds apply at once).

    ``SafetyPolicy(model)``; every :class:`hysac.model.HySAC` has one as ``model.policy``.
    """

    def __init__(self, model: "HySAC") -> None:
        self.model = model

    # -- what is unsafe -----------------------------------------------------------------------------------------
    def bounds(self) -> S.Bounds:
        b = self.model.bounds
        if b is None:
            raise InputError("this model has no safety bounds; fit them with hysac.safety.fit_bounds and set "
                             "model.bounds (or load a model that ships hysac_bounds.json)")
        return b

    def threshold(self, modality: str) -> float:
        """θ: an input of ``modality`` is unsafe iff its score > θ."""
        return float(self.bounds().threshold(check_modality(modality)))  # type: ignore[arg-type]

    def unsafe(self, scores: Tensor, modality: str, threshold: float | None = None) -> tuple[Tensor, float]:
        """(B,) safety scores of ``modality`` inputs → ((B,) bool verdicts, the threshold used)."""
        theta = self.threshold(modality) if threshold is None else float(threshold)
        return over_threshold(scores, theta), theta

    def judge(self, x_hyp: Tensor, modality: str, threshold: float | None = None, *,
              categories: bool = True) -> Verdicts:
        """(B,D) points of ``modality`` → :class:`Verdicts` (``threshold`` overrides the model's)."""
        scores = S.safety_score(x_hyp, self.model.curvature)
        unsafe, theta = self.unsafe(scores, modality, threshold)
        return Verdicts(scores=scores, unsafe=unsafe, threshold=theta,
                        categories=self.model.categorize(x_hyp) if categories else None)

    # -- what each mode does ------------------------------------------------------------------------------------
    def redirect_radius(self, target: str, rule: dict[str, Any] | None = None) -> float:
        """Distance from the origin a query is pulled in to before searching ``target`` items: the model's
        traversal rule (or ``rule``, e.g. ``{"rule": "official", "alpha": 0.8}``) on the target's safe class."""
        rule = self.model.traversal if rule is None else rule
        safe = S.SAFE_CLASS[check_modality(target, "target")]  # type: ignore[index]
        b = self.bounds()
        if safe not in b.classes:
            raise InputError(f"no redirect radius for {target}: the model's bounds lack class {safe}")
        up = b[safe].up_95
        if rule.get("rule", "official") == "bound":
            return float(up + float(rule.get("margin", 0.0)))
        return S.official_tau(up, self.model.curvature, float(rule.get("alpha", 0.8)))

    def seek_unsafe_radius(self, target: str) -> float:
        """Distance from the origin a query is pushed out to when hunting unsafe ``target`` items."""
        unsafe = S.UNSAFE_CLASS[check_modality(target, "target")]  # type: ignore[index]
        b = self.bounds()
        if unsafe not in b.classes:
            raise InputError(f"no seek-unsafe radius for {target}: the model's bounds lack class {unsafe}")
        return float(b[unsafe].avg)

    def radius(self, mode: "Mode | str", target: str) -> float | None:
        """The radius ``mode`` moves queries to before searching ``target`` items (``None``: no move)."""
        mode = Mode.parse(mode)
        if mode.direction == "in":
            return self.redirect_radius(target)
        if mode.direction == "out":
            return self.seek_unsafe_radius(target)
        return None

    def trigger_thresholds(self, query: "str | Sequence[str]", n: int) -> Tensor:
        """(n,) fp64 unsafe thresholds of the queries' own modalities (``query``: one modality or one per query)."""
        qs = [query] * n if isinstance(query, str) else list(query)
        if len(qs) != n:
            raise InputError(f"query modalities: expected 1 or {n}, got {len(qs)}")
        theta = {m: self.threshold(m) for m in set(qs)}
        return torch.tensor([theta[m] for m in qs], dtype=torch.float64)

    def move(self, x_hyp: Tensor, mode: "Mode | str", target: str, *, query: "str | Sequence[str] | None" = None,
             tau: float | None = None, how: Literal["geodesic", "paper"] = "geodesic") -> Moved:
        """(B,D) or (D,) query points → :class:`Moved`: where ``mode`` puts them before searching ``target``.

        ``query`` is the queries' modality (one, or one per query): with the model's ``trigger: threshold`` rule,
        ``redirect`` then moves only queries whose score exceeds that modality's unsafe threshold. Without it (an
        explicit traversal of points) every query beyond the radius moves. ``tau`` replaces the mode's radius;
        ``how="paper"`` gives the official output form (space norm τ)."""
        mode = Mode.parse(mode)
        check_modality(target, "target")
        if mode.direction is None:
            return Moved(points=x_hyp, moved=torch.zeros(x_hyp.shape[:-1], dtype=torch.bool), radius=None,
                         direction=None)
        radius = float(tau) if tau is not None else self.radius(mode, target)
        assert radius is not None  # a mode with a direction has a radius
        c = self.model.curvature
        y = S.traverse(x_hyp, c, radius, direction=mode.direction, mode=how)
        before = S.safety_score(x_hyp, c)
        moved = before > radius if mode.direction == "in" else before < radius
        judged_safe = None
        if mode.direction == "in" and query is not None and self.model.traversal.get("trigger") == "threshold":
            for q in [query] if isinstance(query, str) else query:
                check_modality(q, "query modality")
            n = 1 if x_hyp.dim() == 1 else x_hyp.shape[0]
            theta = self.trigger_thresholds(query, n).reshape(before.shape).to(before.device)
            judged_safe = moved & ~over_threshold(before.double(), theta)
            moved = moved & ~judged_safe
            y = torch.where(moved.unsqueeze(-1), y, x_hyp.to(y.dtype))
            judged_safe = judged_safe.cpu()
        return Moved(points=y, moved=moved.cpu(), radius=float(radius), direction=mode.direction,
                     judged_safe=judged_safe)

    def paper_move(self, x_hyp: Tensor, target: str, *, seek: bool = False) -> Moved:
        """The official evaluation code's traversal for Tables 1 and 2 (``recalls.py``), kept apart from the
        modes so that paper-protocol rows can be reported next to geodesic ones: radius
        ``τ = official_tau(bound, c, α=0.8)`` and the official output ``τ·x/‖x‖``.

        * ``seek=False`` (Table 1): pull in to τ of the target's safe class ``up_95`` (V for images, S for texts);
        * ``seek=True`` (Table 2): image target → push *out* to τ of ``G.up_95`` (``recall_U2GandV``);
          text target → pull *in* to τ of ``U.up_95`` (``recall_G2UandS``)."""
        target = check_modality(target, "target")
        b = self.bounds()
        if not seek:
            cls, direction = S.SAFE_CLASS[target], "in"  # type: ignore[index]
        elif target == "image":
            cls, direction = "G", "out"
        else:
            cls, direction = "U", "in"
        if cls not in b.classes:
            raise InputError(f"no paper traversal radius for {target}: the model's bounds lack class {cls}")
        tau = S.official_tau(b[cls].up_95, self.model.curvature, 0.8)
        y = S.traverse(x_hyp, self.model.curvature, tau, direction=direction, mode="paper")  # type: ignore[arg-type]
        d0 = S.safety_score(x_hyp, self.model.curvature)
        moved = d0 > tau if direction == "in" else d0 < tau
        return Moved(points=y, moved=moved.cpu(), radius=float(tau), direction=direction)  # type: ignore[arg-type]
