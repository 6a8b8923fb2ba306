"""The README's two-node roaming example, run as written (free ports instead of 8000/9000
and 8001/9001, a faster simulated clock), by bash in a fresh folder."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Roaming between two nodes", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_roaming_example_delivers_cdrs_to_the_emsp(tmp_path):
    script = _example()
    ports = {p: str(_free_port()) for p in ("8000", "9000", "8001", "9001")}
    for old, new in ports.items():
        script = script.replace(old, new)
    script = script.replace("--speed 360", "--speed 1800")
    # wait for each node's port before going on, as a reader waits for the banner
    wait = (
        "for p in {a} {b}; do for i in $(seq 100); do "
        "(echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done; done\n"
    ).format(a=ports["8000"], b=ports["8001"])
    script = script.replace("evflex id-token add", wait + "evflex id-token add", 1)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"]}
    env.pop("EVFLEX_VALIDATE_RESPONSES", None)
    full = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + script
    run = subprocess.run(["bash", "-c", full], cwd=tmp_path, capture_output=True, text=True,
                         timeout=180, env=env)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = run.stdout.split("kWh out", 1)[1]
    rows = [line for line in table.splitlines() if "CARD-B1" in line]
    assert rows, run.stdout[-3000:]
    kwh = [float(x) for line in rows for x in re.findall(r"│\s*(\d+\.\d{3})\s*│", line)[:1]]
    assert kwh and all(k > 0 for k in kwh), rows
