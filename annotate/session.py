"""Committing annotation decisions to the catalog, with a session undo stack (no Qt).

The Qt tools (:mod:`mmdsynth.annotate.heads`, :mod:`mmdsynth.annotate.eyes`,
:mod:`mmdsynth.annotate.dups`) never write to the catalog themselves; every
decision goes through an :class:`AnnotationSession` (heads, eyes):

* :meth:`AnnotationSession.accept`: the values on screen become ``human``
  annotations of one model (and a model marked unusable becomes usable again);
* :meth:`AnnotationSession.mark_unusable`: status ``unusable`` with a reason;
* :meth:`AnnotationSession.undo`: puts back exactly what the last decision of
  this session replaced (values, origins, timestamps, status, reason).

or a :class:`DedupSession` (the duplicate review; decisions as in
:mod:`mmdsynth.datasets.dedup`):

* :meth:`DedupSession.keep`: keep one member of a group, the others are
  duplicates of it (status ``duplicate``: never rendered);
* :meth:`DedupSession.split`: one member is not a duplicate of the others
  (stored "not duplicates" pairs: dedup never groups them again);
* :meth:`DedupSession.mark_duplicate`: one member is a duplicate of another;
* :meth:`DedupSession.clear`: forget the decisions about a group;
* :meth:`DedupSession.undo`: puts back what the last one replaced
  (decisions, their origins and timestamps, statuses).

Each of these is ONE catalog transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``
in WAL mode with ``synchronous=FULL``), committed before the method returns.
So a tool killed at any moment (SIGKILL, power loss) keeps every decision whose
method returned, and loses nothing else than the model on screen: a transaction
cut short is rolled back by SQLite on the next open, never half applied.

The undo stack lives in memory (this session's decisions only). An undo
refuses (:class:`UndoConflict`) when the model's rows changed since the
decision (another process or tool wrote them), rather than overwrite that.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mmdsynth.datasets import dedup
from mmdsynth.datasets.catalog import HEAD_KEYS, AnnotationValue, Catalog
from mmdsynth.mmd.schema import EXPRESSION_SLOTS

__all__ = ["TOOL_KEYS", "AnnotationSession", "Change", "DedupDecision", "DedupSession", "UndoConflict"]

#: The annotation keys each tool reviews.
TOOL_KEYS: dict[str, tuple[str, ...]] = {"heads": tuple(HEAD_KEYS), "eyes": tuple(EXPRESSION_SLOTS)}

UNDO_LIMIT = 1000


class UndoConflict(RuntimeError):
    """The model's catalog rows changed since the decision being undone."""


@dataclass(frozen=True)
class Change:
    """One committed decision of a session, with what it replaced.

    * ``model_id``; ``action``: ``"accept"`` or ``"unusable"``.
    * ``before``/``after``: ``{key: AnnotationValue or None (no row)}`` for the
      keys the decision wrote, as stored before and right after it.
    * ``status_before``/``status_after``: ``(status, reason)`` of the model.
    * ``at``: ``time.time()`` of the commit.
    """

    model_id: str
    action: str
    before: dict[str, AnnotationValue | None]
    after: dict[str, AnnotationValue | None]
    status_before: tuple[str, str]
    status_after: tuple[str, str]
    at: float = field(default_factory=time.time)


class _Session:
    """The undo stack and the rate of one tool session (see the subclasses)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.undo_stack: list = []
        self.decisions = 0
        self.started = time.monotonic()

    def per_minute(self, now: float | None = None) -> float:
        """This session's decisions per minute since it started (0 before the first)."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return 60.0 * self.decisions / elapsed if elapsed > 0 and self.decisions else 0.0

    def _push(self, change):
        self.undo_stack.append(change)
        if len(self.undo_stack) > UNDO_LIMIT:
            del self.undo_stack[0]
        self.decisions += 1
        return change

    def _popped(self) -> None:
        self.undo_stack.pop()
        self.decisions = max(0, self.decisions - 1)

    def _status(self, model_id: str) -> tuple[str, str]:
        record = self.catalog.get(model_id)
        if record is None:
            raise KeyError(f"no model {model_id!r} in {self.catalog.library}")
        return (record.status, record.reason)


class AnnotationSession(_Session):
    """The decisions of one tool session on one open catalog.

    Args:
        catalog: the open :class:`~mmdsynth.datasets.catalog.Catalog` (used
            from the thread that opened it: the UI thread).
        keys: the annotation keys this tool writes (:data:`TOOL_KEYS`).

    ``decisions`` counts this session's decisions still in effect (accepts and
    unusable marks, minus undone ones); ``started`` is the session's start
    (``time.monotonic()``); :meth:`per_minute` is the session's rate.
    """

    def __init__(self, catalog: Catalog, keys: Sequence[str]):
        super().__init__(catalog)
        self.keys = tuple(keys)
        self.undo_stack: list[Change] = []

    # -- decisions -----------------------------------------------------------

    def accept(self, model_id: str, values: Mapping[str, float | str | None], make_usable: bool = True) -> Change:
        """Store ``values`` (``{key: value}``, keys of this tool; None = "the
        model has no such morph") as ``human`` annotations of ``model_id``, in
        one transaction. With ``make_usable``, a model whose status is
        ``unusable`` is set back to ``ok`` in the same transaction (accepting
        means the person found it usable).

        Returns the :class:`Change` (also pushed on the undo stack).
        Raises ValueError (a key of another tool, an invalid value) or
        KeyError (unknown model); nothing is written then.
        """
        unknown = [k for k in values if k not in self.keys]
        if unknown:
            raise ValueError(f"keys {unknown} are not reviewed by this tool (its keys: {', '.join(self.keys)})")
        cat = self.catalog
        with cat.transaction():
            status_before = self._status(model_id)
            before_all = cat.annotations(model_id)
            before = {k: before_all.get(k) for k in values}
            cat.set_annotations(model_id, dict(values), "human")
            if make_usable and status_before[0] == "unusable":
                cat.set_status(model_id, "ok", "")
            after_all = cat.annotations(model_id)
            after = {k: after_all.get(k) for k in values}
            status_after = self._status(model_id)
        return self._push(Change(model_id, "accept", before, after, status_before, status_after))

    def mark_unusable(self, model_id: str, reason: str) -> Change:
        """Set the model's status to ``unusable`` with ``reason`` (one line), in
        one transaction. Annotations are left as they are. Returns the
        :class:`Change`. KeyError for an unknown model."""
        cat = self.catalog
        with cat.transaction():
            status_before = self._status(model_id)
            cat.set_status(model_id, "unusable", reason.strip() or "marked unusable")
            status_after = self._status(model_id)
        return self._push(Change(model_id, "unusable", {}, {}, status_before, status_after))

    def undo(self) -> Change | None:
        """Undo the last decision of this session still in effect, in one
        transaction: the keys it wrote get back their previous rows (value,
        origin and timestamp; keys that had no row lose theirs) and the model
        its previous status and reason. Returns the undone :class:`Change`, or
        None when there is nothing to undo.

        Raises :class:`UndoConflict` (nothing is changed, the decision stays
        on the stack) when the model's rows are no longer what the decision
        left (changed by another process since).
        """
        if not self.undo_stack:
            return None
        change = self.undo_stack[-1]
        cat = self.catalog
        with cat.transaction():
            current = cat.annotations(change.model_id)
            status = self._status(change.model_id)
            if any(current.get(k) != v for k, v in change.after.items()) or status != change.status_after:
                raise UndoConflict(
                    f"cannot undo: model {change.model_id[:12]} was changed since (by another tool or process)")
            if change.after:
                cat.clear_annotations(change.model_id, list(change.after))
            for key, old in change.before.items():
                if old is not None:
                    cat.set_annotations(change.model_id, {key: old.value}, old.origin, updated_at=old.updated_at)
            if change.status_before != status:
                cat.set_status(change.model_id, *change.status_before)
        self._popped()
        return change


@dataclass(frozen=True)
class DedupDecision:
    """One committed decision of the duplicate review.

    * ``action``: ``"keep"``, ``"split"``, ``"duplicate"`` or ``"clear"``;
    * ``subject``: the member the person chose (the kept one, the one split
      off or marked; for ``clear`` the group's first member);
    * ``members``: the group's members when it was decided;
    * ``changes``: the :class:`~mmdsynth.datasets.dedup.DecisionChange` list
      the catalog write made (empty: nothing needed changing);
    * ``statuses_after``: ``{model_id: (status, reason)}`` right after it,
      for every model it touched (an undo checks them);
    * ``at``: ``time.time()`` of the commit.
    """

    action: str
    subject: str
    members: tuple[str, ...]
    changes: tuple[dedup.DecisionChange, ...]
    statuses_after: dict[str, tuple[str, str]]
    at: float = field(default_factory=time.time)


class DedupSession(_Session):
    """The duplicate-review decisions of one session on one open catalog
    (the module docstring). Every method commits one transaction, as a person
    (origin ``human``), and returns a :class:`DedupDecision`; only those that
    changed something go on the undo stack. KeyError for an unknown model."""

    def keep(self, keeper: str, members: Sequence[str]) -> DedupDecision:
        """Keep ``keeper``; every other model of ``members`` is a duplicate of it."""
        return self._commit("keep", keeper, members, lambda: dedup.keep_one(self.catalog, keeper, members))

    def split(self, member: str, members: Sequence[str]) -> DedupDecision:
        """``member`` is not a duplicate of any other model of ``members``
        (and no longer one of them)."""
        others = [m for m in members if m != member]
        return self._commit("split", member, members,
                            lambda: dedup.split_group(self.catalog, [[member], others]))

    def mark_duplicate(self, member: str, of: str, members: Sequence[str] = ()) -> DedupDecision:
        """``member`` is a duplicate of ``of`` (``of`` itself is not changed).
        ValueError when they are the same model."""
        return self._commit("duplicate", member, members or (member, of),
                            lambda: dedup.mark_duplicates(self.catalog, [member], of))

    def clear(self, members: Sequence[str]) -> DedupDecision:
        """Forget the keep/duplicate decisions of ``members`` (duplicates become
        ``ok`` again) and the "not duplicates" pairs among them."""
        return self._commit("clear", members[0], members, lambda: dedup.clear_decisions(self.catalog, members))

    def undo(self) -> DedupDecision | None:
        """Undo the last decision of this session that changed something, in
        one transaction (:func:`~mmdsynth.datasets.dedup.revert`). Returns it,
        or None when there is nothing to undo.

        Raises :class:`UndoConflict` (nothing is changed, the decision stays on
        the stack) when a decision, pair or status it wrote is no longer what
        it left (a rerun of ``mmdsynth dedup`` or another tool changed it)."""
        if not self.undo_stack:
            return None
        decision: DedupDecision = self.undo_stack[-1]
        cat = self.catalog
        with cat.transaction():
            if self._state(decision.changes) != self._final(decision.changes) or any(
                    self._status(m) != st for m, st in decision.statuses_after.items()):
                raise UndoConflict(f"cannot undo the {decision.action} of {decision.subject[:12]}: the decisions "
                                   "about this group were changed since (by a dedup run, another tool or process)")
            dedup.revert(cat, decision.changes)
        self._popped()
        return decision

    # -- helpers -------------------------------------------------------------

    def _commit(self, action: str, subject: str, members: Sequence[str], write) -> DedupDecision:
        with self.catalog.transaction():
            changes = tuple(write())
            touched = {c.target for c in changes if isinstance(c.target, str)}
            statuses = {m: self._status(m) for m in sorted(touched)}
        decision = DedupDecision(action, subject, tuple(members), changes, statuses)
        return self._push(decision) if changes else decision

    @staticmethod
    def _final(changes) -> dict:
        """What ``changes`` left, per target (the last change of a target wins)."""
        return {c.target: c.after for c in changes}

    def _state(self, changes) -> dict:
        """What the catalog holds now for the targets of ``changes``."""
        pairs = self.catalog.distinct_pairs()
        return {c.target: pairs.get(c.target) if isinstance(c.target, tuple) else self.catalog.duplicate_decision(c.target)
                for c in changes}

