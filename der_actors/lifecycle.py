"""The dispatch lifecycle: every legal transition in one table (pure, h11-style).

    submitted -> pending   (target offline; a later issue delivers it on reconnect)
    submitted -> sent      (handed to the session that serves the target)
    pending   -> sent
    sent      -> received  (the agent acknowledged arrival)
    sent/received -> applied | rejected (the agent's outcome)
    sent/received -> failed  (no outcome within the ack timeout)
    submitted/pending -> expired | superseded
    sent/received -> pending | expired   (after a headend restart the outcome is unknown: it is
                                          re-sent if still within its TTL, else it expired)

An illegal transition raises `IllegalTransition` and changes nothing.
"""

from __future__ import annotations

import enum

import attrs


class DispatchState(str, enum.Enum):
    SUBMITTED = "submitted"
    PENDING = "pending"
    SENT = "sent"
    RECEIVED = "received"
    APPLIED = "applied"
    REJECTED = "rejected"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


S = DispatchState
_TERMINAL = frozenset({S.APPLIED, S.REJECTED, S.EXPIRED, S.SUPERSEDED, S.FAILED})
TERMINAL_STATES = tuple(sorted(st.value for st in _TERMINAL))
_ALLOWED: dict[DispatchState, frozenset[DispatchState]] = {
    S.SUBMITTED: frozenset({S.PENDING, S.SENT, S.EXPIRED, S.SUPERSEDED}),
    S.PENDING: frozenset({S.SENT, S.EXPIRED, S.SUPERSEDED}),
    S.SENT: frozenset({S.RECEIVED, S.APPLIED, S.REJECTED, S.FAILED, S.PENDING, S.EXPIRED}),
    S.RECEIVED: frozenset({S.APPLIED, S.REJECTED, S.FAILED, S.PENDING, S.EXPIRED}),
}


class IllegalTransition(ValueError):
    pass


@attrs.frozen
class Transition:
    state: DispatchState
    at: float  # epoch seconds
    reason: str = ""


@attrs.frozen
class Lifecycle:
    """A dispatch's state and the timestamped history that led to it."""

    history: tuple[Transition, ...]

    @classmethod
    def start(cls, at: float) -> Lifecycle:
        return cls((Transition(S.SUBMITTED, at),))

    @property
    def state(self) -> DispatchState:
        return self.history[-1].state

    def to(self, state: DispatchState, at: float, reason: str = "") -> Lifecycle:
        if state not in _ALLOWED.get(self.state, frozenset()):
            raise IllegalTransition(f"{self.state.value} -> {state.value} is not allowed")
        return Lifecycle(self.history + (Transition(state, at, reason),))
