"""The audit trail: who did what, when, from where, and the outcome (append-only).

A row is built from an action (:func:`entry`): its texts are cut to their
columns, the request summary is the body with every secret replaced
(:func:`summary`: passwords, tokens, TOTP codes, private keys; a deny-list of
key names, and any value holding a PEM private key), card numbers and tokens
in a path or target are masked but for their last four characters
(:func:`mask`). :func:`append` adds it to the hash chain: ``hash`` is the
SHA-256 of the previous row's hash and this row's content, so that changing or
deleting a row is found by :func:`verify`. Appends lock the chain's head
(``audit_chain``), so that the node and the command line write one chain.

Nothing here edits or deletes a row; the API only reads (``api/audit.py``).
Times are wall-clock UTC (like logins), whatever clock the node runs on.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import io
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import String, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evflex.clock import utcnow
from evflex.security.audit import SECRET_KEYS, SECRET_WORDS
from evflex.store.audit_tables import AuditChain, AuditEntry

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = Literal["ok", "refused", "failed"]
OUTCOMES = ("ok", "refused", "failed")
REFUSED = frozenset({401, 403, 429})
GENESIS = "0" * 64  # the prev_hash of the first row
REDACTED = "[redacted]"
MAX_SUMMARY_CHARS = 2000
MAX_VALUE_CHARS = 200
MAX_ITEMS = 20
MAX_DEPTH = 4
#: Key names whose values are secrets (besides :mod:`evflex.security.audit`'s words).
_MORE_SECRET_WORDS = ("private", "pin", "otp", "credential")
_PRIVATE_PEM = "PRIVATE KEY-----"
#: The columns a row's hash covers, in this order.
CONTENT = (
    "at", "actor", "actor_kind", "role", "source", "method", "route", "path", "target",
    "action", "summary", "status", "outcome", "answer", "reason", "duration_ms",
)  # fmt: skip
_LIMITS = {
    c.name: c.type.length
    for c in AuditEntry.__table__.columns
    if isinstance(c.type, String) and c.type.length
}
#: What the CSV export holds, in this order.
CSV_COLUMNS = (
    "id", "at", "actor", "actor_kind", "role", "source", "action", "target", "outcome",
    "status", "answer", "reason", "method", "path", "summary", "duration_ms", "hash",
)  # fmt: skip


def secret_key(key: str) -> bool:
    """Whether a key name says its value is a secret (password, token, TOTP code, key ...)."""
    k = key.lower()
    return (
        k in SECRET_KEYS
        or any(w in k for w in SECRET_WORDS)
        or any(w in k for w in _MORE_SECRET_WORDS)
    )


def mask(value: str) -> str:
    """All but the last four characters replaced: ``04A1B2C3D4`` -> ``******C3D4``."""
    return "*" * max(0, len(value) - 4) + value[-4:]


def outcome(status: int) -> Outcome:
    if status in REFUSED:
        return "refused"
    return "failed" if status >= 400 else "ok"


def _text(value: Any, limit: int) -> str:
    """Text a column holds: no NUL, no lone UTF-16 surrogate (as "?"), at most ``limit`` long."""
    text = str(value).replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cleaned(value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return f"({len(value)} keys)"
        items = list(value.items())
        out = {
            _text(k, 64): REDACTED if secret_key(str(k)) else _cleaned(v, depth + 1)
            for k, v in items[:MAX_ITEMS]
        }
        if len(items) > MAX_ITEMS:
            out["…"] = f"{len(items) - MAX_ITEMS} more keys"
        return out
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            return f"({len(value)} items)"
        out_list = [_cleaned(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            out_list.append(f"… {len(value) - MAX_ITEMS} more items")
        return out_list
    if isinstance(value, str):
        return REDACTED if _PRIVATE_PEM in value else _text(value, MAX_VALUE_CHARS)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # a summary is JSON: "nan", "inf"
    if isinstance(value, bool | int | float) or value is None:
        return value
    return _text(value, MAX_VALUE_CHARS)


def summary(data: Any) -> str | None:
    """The request as a short JSON text, every secret replaced by ``[redacted]``."""
    if data is None or data == {}:
        return None
    text = json.dumps(_cleaned(data), ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_SUMMARY_CHARS:
        text = json.dumps({"cut": text[: MAX_SUMMARY_CHARS - 40] + "…"}, ensure_ascii=False)
    return text


def entry(
    *,
    action: str,
    actor: str,
    actor_kind: str,
    outcome: Outcome,
    at: datetime | None = None,
    data: Any = None,
    **fields: Any,
) -> dict[str, Any]:
    """A row's content: texts cut to their columns, NUL dropped, ``data`` summarised."""
    row: dict[str, Any] = dict.fromkeys(CONTENT)
    row.update(fields)
    row.update(
        at=at or utcnow(), action=action, actor=actor, actor_kind=actor_kind, outcome=outcome
    )
    row["summary"] = summary(data)
    for key, limit in _LIMITS.items():
        if row.get(key) is not None:
            row[key] = _text(row[key], limit)
    if row["duration_ms"] is not None:
        row["duration_ms"] = round(float(row["duration_ms"]), 1)
    return row


def content_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """SHA-256 over the previous row's hash and this row's content."""
    values = [row.get(c) for c in CONTENT]
    values[0] = row["at"].isoformat()
    text = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{text}".encode()).hexdigest()


def _claim_head(dialect: str):
    """The chain's head row if missing; as a write, it also takes the write lock (SQLite)."""
    values = {"id": 1, "rows": 0, "last_id": None, "hash": GENESIS}
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(AuditChain).values(**values).on_conflict_do_nothing(index_elements=["id"])


async def append(s: AsyncSession, row: dict[str, Any]) -> dict[str, Any]:
    """Add ``row`` (from :func:`entry`) to the chain; returns it with its id and hashes."""
    await s.execute(_claim_head(s.bind.dialect.name))
    head = await s.scalar(
        select(AuditChain)
        .where(AuditChain.id == 1)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert head is not None
    stored = {**row, "prev_hash": head.hash, "hash": content_hash(head.hash, row)}
    item = AuditEntry(**stored)
    s.add(item)
    await s.flush()
    head.rows += 1
    head.last_id = item.id
    head.hash = stored["hash"]
    await s.flush()
    return {"id": item.id, **stored}


async def verify(s: AsyncSession, chunk: int = 1000) -> dict[str, Any]:
    """Walk the chain: ``{ok, rows, first_bad_id, reason}`` (rows: how many were checked)."""
    head = await s.get(AuditChain, 1)
    last_id = head.last_id if head is not None else None
    table = AuditEntry.__table__
    prev, checked, after = GENESIS, 0, -1
    while True:
        query = select(table).where(table.c.id > after).order_by(table.c.id).limit(chunk)
        if last_id is not None:
            query = query.where(table.c.id <= last_id)  # later rows: appended while we walk
        rows = (await s.execute(query)).mappings().all()
        for r in rows:
            checked += 1
            row = dict(r)
            if head is None:
                return _broken(checked, r["id"], "the chain's head is missing")
            if row["prev_hash"] != prev:
                return _broken(checked, r["id"], "a row before it was deleted or changed")
            if content_hash(prev, row) != row["hash"]:
                return _broken(checked, r["id"], "its content was changed")
            prev = row["hash"]
            after = r["id"]
        if len(rows) < chunk:
            break
    if head is not None and (checked != head.rows or prev != head.hash):
        return _broken(checked, head.last_id, "rows at the end were deleted")
    return {"ok": True, "rows": checked, "first_bad_id": None, "reason": None}


def _broken(rows: int, row_id: int | None, reason: str) -> dict[str, Any]:
    return {"ok": False, "rows": rows, "first_bad_id": row_id, "reason": reason}


# ------------------------------------------------------------------ reading


def filters(
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    outcome: Outcome | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[Any]:
    """WHERE clauses: actor, action and target contain the text (any case); ``[start, end)``."""
    where: list[Any] = []
    for column, text in ((AuditEntry.actor, actor), (AuditEntry.action, action),
                         (AuditEntry.target, target)):  # fmt: skip
        if text:
            where.append(column.icontains(text, autoescape=True))
    if outcome is not None:
        where.append(AuditEntry.outcome == outcome)
    if start is not None:
        where.append(AuditEntry.at >= start)
    if end is not None:
        where.append(AuditEntry.at < end)
    return where


async def count(s: AsyncSession, where: list[Any]) -> int:
    return await s.scalar(select(func.count()).select_from(AuditEntry).where(*where)) or 0


async def page(s: AsyncSession, where: list[Any], offset: int, limit: int) -> list[dict]:
    """Rows newest first, as the API shows them."""
    query = (
        select(AuditEntry).where(*where).order_by(AuditEntry.id.desc()).offset(offset).limit(limit)
    )
    return [shown(r) for r in (await s.execute(query)).scalars()]


def shown(row: AuditEntry | dict[str, Any]) -> dict[str, Any]:
    """A row as the API and the live stream show it (the summary parsed)."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    out = {c: get(c) for c in ("id", *CONTENT, "prev_hash", "hash")}
    out["summary"] = json.loads(out["summary"]) if out["summary"] else None
    return out


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text (no formula from =, +, -, @)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_line(values: Iterable[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow([_cell(v) for v in values])
    return out.getvalue()


async def csv_lines(
    sessionmaker: async_sessionmaker[AsyncSession], where: list[Any], chunk: int = 500
) -> AsyncIterator[str]:
    """The rows (oldest first) as CSV text, a header first, read ``chunk`` rows at a time."""
    yield csv_line(CSV_COLUMNS)
    after = -1
    while True:
        async with sessionmaker() as s:
            query = select(AuditEntry).where(*where, AuditEntry.id > after)
            rows = list((await s.execute(query.order_by(AuditEntry.id).limit(chunk))).scalars())
        for r in rows:
            yield csv_line(getattr(r, c) for c in CSV_COLUMNS)
        if len(rows) < chunk:
            return
        after = rows[-1].id


# ------------------------------------------------------------------ the command line


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown"


async def recorded(
    sessionmaker: async_sessionmaker[AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    action: str,
    target: str | None = None,
    data: Any = None,
    missing: str | None = None,
) -> T:
    """``fn(session)`` in one transaction with its audit row (actor ``cli:<os user>``);
    a ValueError it raises, or a falsy answer with ``missing``, is recorded as failed."""
    fields = dict(action=action, target=target, data=data, actor=f"cli:{os_user()}",
                  actor_kind="cli", source="local", method="CLI")  # fmt: skip
    try:
        async with sessionmaker() as s, s.begin():
            result = await fn(s)
            failed = missing is not None and not result
            reason = missing if failed else None
            await append(s, entry(outcome="failed" if failed else "ok", reason=reason, **fields))
    except ValueError as exc:
        async with sessionmaker() as s, s.begin():
            await append(s, entry(outcome="failed", reason=str(exc), **fields))
        raise
    return result
