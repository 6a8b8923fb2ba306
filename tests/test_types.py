"""The domain model, the scheduler and smart charging type-check under ``mypy --strict``.

Settings come from ``[tool.mypy]`` in pyproject.toml: modules these packages
import from elsewhere (store, csms, ...) are read for their types only
(``follow_imports = "silent"``), so their own errors do not count here.
"""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["domain", "scheduling", "smartcharging"]


def test_strict_mypy_is_clean():
    paths = [str(ROOT / "src" / "evflex" / p) for p in PACKAGES]
    config = str(ROOT / "pyproject.toml")
    out, err, status = api.run(["--strict", "--config-file", config, "--no-incremental", *paths])
    assert status == 0, f"mypy --strict found problems:\n{out}{err}"
    assert "Success: no issues found" in out
