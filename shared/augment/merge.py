"""Policy aggregation: the server's one way of turning site policies into a global one.

:func:`aggregate_policies` merges the sites' policies (:func:`merge_policies`, an
example-weighted average of every op) when they can be merged, and otherwise takes the
example-weighted vote: the policy with the most examples behind it. Policies cannot be
merged when their sampling kinds differ, as after a private policy search where one site
chose a RandAugment candidate and another a plain one (averaging a sampled policy with an
unsampled one would describe neither), or when the policies that warp images (those with
a geometric op) differ in border mode; the border of a policy without one changes nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fedaug.errors import PolicyError

from .ops import OPS
from .policy import DEFAULT_BORDER, MAX_MAGNITUDE, Policy, Sampling
from .schema import P, is_number, show

__all__ = ["MIN_MERGED_P", "aggregate_policies", "merge_policies"]

log = logging.getLogger("fedaug.augment")

#: Merged ops with a probability below this are dropped by :func:`merge_policies`.
MIN_MERGED_P = 0.05


def _input_problems(policies: list[Any], weights: list[Any]) -> list[str]:
    """Problems that make any aggregation meaningless: no policies, bad weights, mixed
    modalities (one run augments one modality)."""
    problems = []
    if not policies:
        problems.append("policies: need at least one policy")
    if len(weights) != len(policies):
        problems.append(f"weights: need one weight per policy ({len(policies)}), got {len(weights)}")
    for i, p in enumerate(policies):
        if not isinstance(p, Policy):
            problems.append(f"policies.{i}: must be a Policy, got {show(p)}")
    for i, w in enumerate(weights):
        if not is_number(w) or not math.isfinite(w) or w < 0:
            problems.append(f"weights.{i}: must be a finite number >= 0, got {show(w)}")
    if not problems and math.fsum(weights) <= 0:
        problems.append(f"weights: must not all be zero, got {weights!r}")
    if not problems:
        modalities = sorted({p.modality for p in policies})
        if len(modalities) > 1:
            problems.append(
                f"policies: mixed modalities {modalities} (merge image and text policies separately)"
            )
    return problems


def _conflicts(policies: list[Policy]) -> list[str]:
    """Why valid policies cannot be averaged into one (empty: they can)."""
    problems = []
    kinds = sorted({p.sampling.kind if p.sampling else "null" for p in policies})
    if len(kinds) > 1:
        problems.append(f"policies: mixed sampling kinds {kinds} (sites must share one sampling kind)")
    borders = sorted(_warped_borders(policies))
    if len(borders) > 1:
        problems.append(f"policies: mixed border modes {borders} (sites must share one border mode)")
    return problems


def _warped_borders(policies: list[Policy]) -> set[str]:
    """The border modes of the policies that warp images (only their borders matter)."""
    return {p.border for p in policies if any(getattr(op, "STAGE", "") == "geometric" for op in p.ops)}


def merge_policies(policies: Sequence[Policy], weights: Sequence[float]) -> Policy:
    """Merge site policies into one by an example-weighted average (strict).

    Parameters
    ----------
    policies : sequence of Policy
        Site policies, all of the same modality, the same sampling kind (or all None), and
        the same border mode among those with a geometric op (the merged policy keeps it).
    weights : sequence of float
        One non-negative weight per policy (e.g. example counts); normalised to sum 1.

    Returns
    -------
    Policy
        The union of op kinds in canonical order. An op's ``p`` is the weighted average
        over all sites (a site without the op counts as ``p = 0``); its other numbers
        and range endpoints are the weighted average over the sites that have it (weights
        renormalised over them), rounded to 6 decimals. Ops whose merged ``p`` is below
        ``MIN_MERGED_P`` (0.05) are dropped. Sampling: ``num_ops`` is the rounded weighted
        average (capped by the number of merged ops), ``magnitude`` the weighted average.

    Raises
    ------
    PolicyError
        Empty input, mismatched lengths, bad weights, mixed modalities, or policies that
        cannot be merged (mixed sampling kinds or border modes).
    """
    policies, weights = list(policies), list(weights)
    problems = _input_problems(policies, weights)
    if not problems:
        problems = _conflicts(policies)
    if problems:
        raise PolicyError(problems)
    return _merge(policies, weights)


def _merge(policies: list[Policy], weights: list[float]) -> Policy:
    total = math.fsum(weights)
    wn = [w / total for w in weights]
    merged = []
    for tag, cls in OPS.items():
        present = [(w, op) for w, p in zip(wn, policies, strict=True) for op in p.ops if op.op == tag]
        if not present:
            continue
        prob = P.clamp(math.fsum(w * op.p for w, op in present))
        if prob < MIN_MERGED_P:
            continue
        wsum = math.fsum(w for w, _ in present)
        if wsum <= 0:  # only zero-weight sites have it
            continue
        kwargs: dict[str, Any] = {"p": prob}
        for name, spec in cls.FIELDS.items():
            if name == "p":
                continue
            values = [getattr(op, name) for _, op in present]
            if spec.kind == "number":
                kwargs[name] = spec.clamp(
                    math.fsum(w * v for (w, _), v in zip(present, values, strict=True)) / wsum
                )
            else:
                kwargs[name] = tuple(
                    spec.clamp(
                        math.fsum(w * v[j] for (w, _), v in zip(present, values, strict=True)) / wsum
                    )
                    for j in range(2)
                )
        merged.append(cls(**kwargs))
    sampling = None
    if policies[0].sampling is not None and merged:
        num = round(math.fsum(w * p.sampling.num_ops for w, p in zip(wn, policies, strict=True)))
        mag = math.fsum(w * p.sampling.magnitude for w, p in zip(wn, policies, strict=True))
        sampling = Sampling(
            kind=policies[0].sampling.kind,
            num_ops=max(1, min(len(merged), int(num))),
            magnitude=min(MAX_MAGNITUDE, max(0.0, round(mag, 6))),
        )
    borders = _warped_borders(policies) or {p.border for p in policies}
    border = borders.pop() if len(borders) == 1 else DEFAULT_BORDER
    return Policy(modality=policies[0].modality, ops=tuple(merged), sampling=sampling,
                  border=border)


def _vote(policies: list[Policy], weights: list[float]) -> tuple[Policy, float]:
    """The policy with the largest total weight (equal policies pool theirs) and that total.

    A tie goes to the policy whose JSON text sorts first, so the result does not depend
    on the order in which sites replied.
    """
    totals: dict[str, list[float]] = {}
    for p, w in zip(policies, weights, strict=True):
        totals.setdefault(p.to_json(), []).append(float(w))
    sums = {key: math.fsum(ws) for key, ws in totals.items()}
    best = min(sums, key=lambda key: (-sums[key], key))
    return Policy.from_json(best), sums[best]


def aggregate_policies(policies: Sequence[Policy], weights: Sequence[float]) -> Policy:
    """The global policy: the weighted merge of the sites' policies, or their weighted vote.

    Parameters
    ----------
    policies : sequence of Policy
        One policy per site, all of one modality.
    weights : sequence of float
        One weight >= 0 per site, normally its example count; not all zero.

    Returns
    -------
    Policy
        :func:`merge_policies` of the policies when they can be merged; otherwise (mixed
        sampling kinds or border modes) the example-weighted vote: the policy with the largest total
        weight (equal policies pool theirs; a tie goes to the policy whose JSON sorts
        first, whatever the order of the sites), logged at INFO on ``fedaug.augment``.

    Raises
    ------
    PolicyError
        Empty input, mismatched lengths, bad weights or mixed modalities: no aggregate
        means anything then.
    """
    policies, weights = list(policies), list(weights)
    problems = _input_problems(policies, weights)
    if problems:
        raise PolicyError(problems)
    conflicts = _conflicts(policies)
    if not conflicts:
        return _merge(policies, weights)
    chosen, weight = _vote(policies, weights)
    log.info(
        "site policies cannot be merged (%s); the example-weighted vote picks the policy with "
        "%g of %g examples behind it: %s",
        "; ".join(conflicts), weight, math.fsum(weights), chosen.to_json(),
    )
    return chosen
