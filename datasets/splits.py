"""``mmdsynth split``: assign every model a train / val / test split by source group.

A network must be evaluated on characters it never saw, and near-identical
copies of one character are the same character. So the unit of assignment is
not a model but a *unit*: the union of source groups (download folders,
usually a franchise) that duplicate groups connect. A unit goes to one split
whole; so no source group and no duplicate group ever spans two splits.

Units are built from: every model's source group; every stored dedup pair that
links two models (:meth:`Catalog.duplicate_pairs`, ``linked``) unless a person
said "not duplicates"; every ``duplicate`` decision (model -> kept model).

Two ways to choose:

* **By name** (:func:`assign_splits` with ``val``/``test`` group names): the
  units holding those groups go to val / test, everything else to train. A
  unit that holds a val group and a test group is an error (say which groups
  to move); a unit pulled into val or test because a duplicate links it to a
  named group is reported (``SplitPlan.pulled``).
* **By ratio** (``ratio=(train, val, test)``, ``seed``): units are shuffled
  with the seed, then val and test are filled in that order up to their share
  of the models (a unit is taken when it does not overshoot the target by more
  than half its own size; if none fits, the smallest unit is taken, so a split
  with a positive share is not empty when there are enough units);
  the rest is train, which always keeps at least one unit when its share is
  positive. The same catalog and seed always give the same split.

Models with status ``ok`` and ``duplicate`` get a split (duplicates follow
their unit, so un-marking one later keeps the guarantee); other models
(``error``, ``not_character``, ``unusable``) get none (NULL). Counts printed
and returned are of ``ok`` models (the ones a render spec uses). The render
spec refers to the result with ``from = "catalog"`` in ``[splits.train]``,
``[splits.val]`` and ``[splits.test]``.
"""

from __future__ import annotations

import difflib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .catalog import SPLITS, Catalog
from .dedup import UnionFind
from .text import count

__all__ = ["SplitError", "SplitPlan", "assign_splits", "normalise_ratio", "plan_splits", "split_units"]

_ASSIGNED = ("ok", "duplicate")


class SplitError(ValueError):
    """A split request that cannot be met (unknown group, a unit in two named
    splits, bad ratios). One line."""


@dataclass
class SplitPlan:
    """The result of :func:`plan_splits` / :func:`assign_splits`.

    * ``assignment``: ``{model_id: split}`` for ok/duplicate models.
    * ``groups``: ``{split: [source groups]}``.
    * ``counts``: ``{split: ok models}``; ``duplicates``: ``{split: duplicate models}``.
    * ``units``: number of units; ``pulled``: ``[(group, split, via group)]``
      groups moved into val/test because a duplicate links them to a named group.
    * ``unassigned``: models without a split (other statuses).
    """

    assignment: dict[str, str] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    units: int = 0
    pulled: list[tuple[str, str, str]] = field(default_factory=list)
    unassigned: int = 0

    def summary(self) -> str:
        """``train 7,840 models (120 groups), val 80 (3 groups), test 80 (2 groups)``."""
        parts = []
        for s in SPLITS:
            n = self.counts.get(s, 0)
            g = len(self.groups.get(s, []))
            dup = self.duplicates.get(s, 0)
            extra = f", +{count(dup, 'duplicate')}" if dup else ""
            parts.append(f"{s} {count(n, 'model')} ({count(g, 'group')}{extra})")
        return ", ".join(parts)


def split_units(catalog: Catalog) -> tuple[dict[str, list[str]], dict[str, int], dict[str, list]]:
    """The units of assignment.

    Returns ``(units, sizes, members)``: ``units`` maps a unit key (its
    smallest group name) to its sorted source groups; ``sizes`` the unit's ok
    models; ``members`` the unit's ``ModelRecord`` list (ok and duplicate).
    """
    with catalog.snapshot():
        records = [r for r in catalog.models() if r.status in _ASSIGNED]
        pairs = catalog.duplicate_pairs(linked_only=True)
        decisions = catalog.duplicate_decisions()
        distinct = catalog.distinct_pairs()
    group_of = {r.id: r.group for r in records}
    uf = UnionFind()
    for r in records:
        uf.find(r.group)
    for p in pairs:
        if (p.model_a, p.model_b) in distinct:
            continue
        if p.model_a in group_of and p.model_b in group_of:
            uf.union(group_of[p.model_a], group_of[p.model_b])
    for mid, d in decisions.items():
        if d.decision == "duplicate" and d.duplicate_of in group_of and mid in group_of:
            uf.union(group_of[mid], group_of[d.duplicate_of])
    units: dict[str, list[str]] = {}
    for g in {r.group for r in records}:
        units.setdefault(uf.find(g), []).append(g)
    units = {min(gs): sorted(gs) for gs in units.values()}
    key_of = {g: k for k, gs in units.items() for g in gs}
    sizes = {k: 0 for k in units}
    members: dict[str, list] = {k: [] for k in units}
    for r in records:
        k = key_of[r.group]
        members[k].append(r)
        if r.status == "ok":
            sizes[k] += 1
    return units, sizes, members


def normalise_ratio(ratio: Sequence[float]) -> tuple[float, float, float]:
    """``(train, val, test)`` shares scaled to add up to 1 (``80,10,10`` is
    ``0.8,0.1,0.1``). Raises :class:`SplitError` unless there are three
    finite numbers >= 0, not all 0."""
    if len(ratio) != 3:
        raise SplitError(f"--ratio needs three numbers (train,val,test), got {len(ratio)}")
    r = tuple(float(x) for x in ratio)
    if any(not (0 <= x < math.inf) for x in r) or sum(r) <= 0:
        raise SplitError(f"--ratio {','.join(f'{x:g}' for x in r)}: give three finite numbers >= 0, not all 0")
    total = sum(r)
    return r[0] / total, r[1] / total, r[2] / total


def plan_splits(catalog: Catalog, val: Sequence[str] = (), test: Sequence[str] = (),
                ratio: Sequence[float] | None = None, seed: int = 0) -> SplitPlan:
    """Compute a split assignment without writing it (see the module docstring).

    Args:
        catalog: the open library.
        val, test: source group names (by name mode). Every other unit is train.
        ratio: ``(train, val, test)`` shares (ratio mode; normalised); exclusive
            with ``val``/``test``.
        seed: shuffle seed of ratio mode.

    Raises:
        SplitError: both or neither mode; an unknown group (with the closest
            names); a group in both val and test; a unit holding a val and a
            test group; bad ratios; an empty library.
    """
    val, test = list(dict.fromkeys(val)), list(dict.fromkeys(test))
    if ratio is not None and (val or test):
        raise SplitError("give either --val/--test groups or --ratio, not both")
    if ratio is None and not (val or test):
        raise SplitError("give --val/--test groups or --ratio train,val,test")
    units, sizes, members = split_units(catalog)
    if not units:
        raise SplitError(f"{catalog.library}: no models with status ok to split")
    key_of = {g: k for k, gs in units.items() for g in gs}
    choice: dict[str, str] = {}
    plan = SplitPlan(units=len(units))
    if ratio is None:
        both = sorted(set(val) & set(test))
        if both:
            raise SplitError(f"group {both[0]!r} is given for both val and test")
        for name in val + test:
            if name not in key_of:
                close = difflib.get_close_matches(name, sorted(key_of), n=3)
                hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                raise SplitError(f"no source group {name!r} among the library's ok models{hint}")
        for split, names in (("val", val), ("test", test)):
            for name in names:
                k = key_of[name]
                if choice.get(k, split) != split:
                    other = [g for g in units[k] if g in (val if split == "test" else test)]
                    raise SplitError(f"groups {name!r} ({split}) and {other[0]!r} ({choice[k]}) share duplicates, "
                                     f"so they cannot be in different splits; put them in the same split")
                choice[k] = split
        for k, split in choice.items():
            named = set(val if split == "val" else test)
            for g in units[k]:
                if g not in named:
                    via = next(x for x in units[k] if x in named)
                    plan.pulled.append((g, split, via))
    else:
        shares = normalise_ratio(ratio)
        total = sum(sizes.values())
        order = sorted(units)
        random.Random(seed).shuffle(order)
        remaining = list(order)
        for split, share in (("val", shares[1]), ("test", shares[2])):
            target = share * total
            if target <= 0:
                continue
            got = 0
            taken = []
            # train keeps at least one unit with models when its share is positive
            spare = sum(1 for k in remaining if sizes[k]) - (1 if shares[0] > 0 else 0)
            for k in remaining:
                if got >= target or spare <= 0:
                    break
                if sizes[k] and got + sizes[k] <= target + 0.5 * sizes[k]:
                    taken.append(k)
                    got += sizes[k]
                    spare -= 1
            if not taken and spare > 0:
                sized = [k for k in remaining if sizes[k]]
                taken.append(min(sized, key=lambda k: (sizes[k], order.index(k))))
            for k in taken:
                choice[k] = split
                remaining.remove(k)
    for k in units:
        split = choice.get(k, "train")
        plan.groups.setdefault(split, []).extend(units[k])
        for r in members[k]:
            plan.assignment[r.id] = split
            if r.status == "ok":
                plan.counts[split] = plan.counts.get(split, 0) + 1
            else:
                plan.duplicates[split] = plan.duplicates.get(split, 0) + 1
    for s in plan.groups:
        plan.groups[s].sort()
    plan.unassigned = catalog.count() - len(plan.assignment)
    return plan


def assign_splits(catalog: Catalog, val: Sequence[str] = (), test: Sequence[str] = (),
                  ratio: Sequence[float] | None = None, seed: int = 0, dry_run: bool = False) -> SplitPlan:
    """:func:`plan_splits`, then write it to the catalog's ``split`` column in
    one transaction (every model: its split, or NULL when it gets none),
    unless ``dry_run``. Returns the plan. Raises :class:`SplitError` as
    :func:`plan_splits`."""
    plan = plan_splits(catalog, val=val, test=test, ratio=ratio, seed=seed)
    if dry_run:
        return plan
    with catalog.transaction():
        current = {r.id: r.split for r in catalog.models()}
        for mid, old in current.items():
            new = plan.assignment.get(mid)
            if new != old:
                catalog.set_split(mid, new)
    return plan
