"""Message ids a station gets wrong, and floods: a CALL whose id is still being answered,
ids used again or in any order, answers to nothing, more CALLs than OCPP-J allows
outstanding. Each is answered once or ignored, memory stays bounded, and the station
of the ``ocpp`` library beside the attacker is served throughout."""

from __future__ import annotations

import asyncio
import json

import pytest

from evflex.csms.connection import MAX_QUEUED_CALLS
from security.ocpphard import frame, hostile_and_good, row_counts, writer_held

HB = '[2,"{}","Heartbeat",{{}}]'


async def answers(ws, n: int) -> list[list]:
    return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(n)]


async def received(node, station_id: str, n: int) -> None:
    """Wait until the node has read ``n`` frames from the station."""
    await node.wait_for(lambda: node.rt.ocpp.connections[station_id].received >= n)


async def test_a_call_with_the_id_of_one_being_answered_is_dropped(node):
    async with hostile_and_good(node, name="DUP") as pair:
        async with writer_held(node):  # the first heartbeat waits for its write
            for mid in ("dup", "dup", "next"):
                await pair.hostile.send(HB.format(mid))
            await received(node, "DUP", 4)  # the boot and these three
        got = await answers(pair.hostile, 2)
        assert [a[:2] for a in got] == [[3, "dup"], [3, "next"]]
        assert (await pair.send(HB.format("last")))[:2] == [3, "last"]  # nothing else came
        await pair.good_is_served()


async def test_ids_used_again_or_in_any_order_are_answered_and_store_nothing_twice(node):
    meter = frame("r1", "MeterValues", '{"connectorId":1,"meterValue":[{"timestamp":'
                  '"2026-01-01T00:00:00Z","sampledValue":[{"value":"5"}]}]}')
    async with hostile_and_good(node, name="REPLAY") as pair:
        assert (await pair.send(meter))[:2] == [3, "r1"]
        before = await row_counts(node)
        assert (await pair.send(meter))[:2] == [3, "r1"]  # the same message once more
        assert await row_counts(node) == before
        for mid in ("9", "3", "zz", "10", "3"):
            assert (await pair.send(HB.format(mid)))[:2] == [3, mid]
        await pair.good_is_served()


async def test_answers_to_nothing_are_ignored_and_kept_nowhere(node):
    async with hostile_and_good(node, name="STRAY") as pair:
        conn = node.rt.ocpp.connections["STRAY"]
        for i in range(500):
            await pair.hostile.send(f'[3,"nothing-{i}",{{"status":"Accepted"}}]')
            await pair.hostile.send(f'[4,"nothing-{i}","GenericError","{"x" * 1000}",{{}}]')
        assert (await pair.send(HB.format("hb")))[:2] == [3, "hb"]  # no answer came before
        assert conn._pending == {}
        await pair.good_is_served()


@pytest.mark.parametrize("proto,code", [("ocpp1.6", "GenericError"),
                                        ("ocpp2.0.1", "RpcFrameworkError")])
async def test_a_flood_of_calls_is_bounded_and_each_is_answered_once(node, proto, code):
    """More CALLs than may wait are refused at once; the others are all answered."""
    n = MAX_QUEUED_CALLS + 30
    async with hostile_and_good(node, proto, "FLOOD") as pair:
        conn = node.rt.ocpp.connections["FLOOD"]
        async with writer_held(node):
            for i in range(n):
                await pair.hostile.send(HB.format(i))
            refused = await answers(pair.hostile, 29)  # they come while the writer is held
            await received(node, "FLOOD", n + 1)
            assert len(conn._inbox) <= MAX_QUEUED_CALLS
        got = refused + await answers(pair.hostile, n - 29)
        assert (await pair.send(HB.format("after")))[:2] == [3, "after"]  # nothing else came
        assert sorted(int(a[1]) for a in got) == list(range(n))  # each answered once
        errors = [a for a in got if a[0] == 4]
        assert {a[2] for a in errors} == {code}
        assert len(errors) in (29, 30)  # one CALL may be in hand when the queue is full
        await pair.good_is_served()
