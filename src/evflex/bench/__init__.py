"""Benchmarks of a running evflex node: they print a table and write JSON.

``evflex bench ocpp`` (:mod:`evflex.bench.ocpp`) loads the OCPP endpoint with
thousands of light simulated stations and measures throughput, latency,
errors and the server's CPU and memory.
"""
