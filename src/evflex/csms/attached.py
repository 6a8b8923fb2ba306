"""State that a feature keeps per CSMS (monitoring, uploads), attached to the service
without the service knowing the feature; it goes with the service."""

from __future__ import annotations

import weakref
from typing import Any, TypeVar

T = TypeVar("T")

_STATES: weakref.WeakKeyDictionary[Any, dict[type, Any]] = weakref.WeakKeyDictionary()


def attached(service: Any, kind: type[T]) -> T:
    """The ``kind`` state of a CSMS (a CsmsService, or anything with ``.service``),
    made on first use."""
    service = getattr(service, "service", service)
    states = _STATES.setdefault(service, {})
    state = states.get(kind)
    if state is None:
        state = states[kind] = kind()
    return state
