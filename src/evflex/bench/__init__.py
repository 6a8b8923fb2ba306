"""Benchmarks of a running evflex node: they print a table and write JSON.

``evflex bench ocpp`` (:mod:`evflex.bench.ocpp`) loads the OCPP endpoint with
thousands of light simulated stations and measures throughput, latency,
errors and the server's CPU and memory.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OcppBenchConfig", "bench_ocpp_command", "run_ocpp_bench"]


def __getattr__(name: str) -> Any:  # imported on first use: the package stays light
    if name in __all__:
        from evflex.bench import ocpp

        return getattr(ocpp, name)
    raise AttributeError(f"module 'evflex.bench' has no attribute {name!r}")
