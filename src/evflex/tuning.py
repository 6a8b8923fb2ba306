"""Process tuning for long-running servers and load generators."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Garbage collection for a long-running server holding many connections.

    What the process holds after start is kept out of every later collection,
    and young objects are collected less often: with 20,000 connections, the
    default thresholds make the collector walk the whole heap many times a
    second and stall every handshake and answer behind it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
