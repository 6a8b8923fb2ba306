"""The OCPP 2.1 link of a simulated station: workarounds for the ``ocpp`` 2.1.0 library.

* (a) :meth:`WireLink21.call` serialises outgoing payloads itself so that the
  per-phase keys keep the spec's spelling (``limit_L2``); handlers read
  nested 2.1 objects through :func:`~evflex.sim.charging.camel_kwargs`.
* (b) :meth:`WireLink21.route_message` understands SEND (6, answered with
  nothing) and CALLRESULTERROR (5): one about a CALL of ours fails that call at
  once; one about a CALLRESULT of ours is counted as an error.
* (c) :meth:`WireLink21._handle_call` answers a CALL without handler with
  CALLERROR NotSupported (a known 2.1 action) or NotImplemented (unknown
  action); the library answers nothing at all for version 2.1.

The 2.1 handlers (:class:`evflex.sim.v21.Link21`) build on this class and on
the 2.0.1 handlers it inherits.
"""

from __future__ import annotations

import json
from typing import Any

from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import GenericError, NotSupportedError, OCPPError, UnknownCallErrorCodeError
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.messages import Call, CallError, MessageType, validate_payload
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v21.enums import Action as Action21

from evflex.csms.rpc import (
    CALLRESULTERROR,
    SEND,
    SEND_ACTIONS,
    encode_send,
    fix_phase_keys,
)
from evflex.csms.rpc import validate as validate_frame
from evflex.sim.link import LinkDown
from evflex.sim.v201 import Link201

_ACTIONS_21 = frozenset(a.value for a in Action21) | SEND_ACTIONS


class WireLink21(Link201):
    """The 2.0.1 handlers on an ``ocpp2.1`` connection, with the library workarounds."""

    _call = call21
    _call_result = result21
    _ocpp_version = "2.1"

    _pending_call_id: str | None = None

    # -- (a) outgoing payloads

    async def call(
        self,
        payload: Any,
        suppress: bool = True,
        unique_id: str | None = None,
        skip_schema_validation: bool = False,
    ) -> Any:
        action = type(payload).__name__
        body = fix_phase_keys(snake_to_camel_case(remove_nones(serialize_as_dict(payload))))
        message_id = unique_id if unique_id is not None else str(self._unique_id_generator())
        request = Call(unique_id=message_id, action=action, payload=body)
        if not skip_schema_validation:
            await validate_payload(request, self._ocpp_version)
        async with self._call_lock:
            self._pending_call_id = message_id
            try:
                await self._send(request.to_json())
                try:
                    response = await self._get_specific_response(message_id, self._response_timeout)
                except TimeoutError:
                    raise TimeoutError(
                        f"Waited {self._response_timeout}s for the response to {action}"
                    ) from None
            finally:
                self._pending_call_id = None
        if response.message_type_id == MessageType.CallError:
            if suppress:
                return None
            try:
                error = response.to_exception()
            except UnknownCallErrorCodeError:
                error = GenericError(
                    description=response.error_description, details=response.error_details
                )
            raise error
        if not skip_schema_validation:
            response.action = action
            await validate_payload(response, self._ocpp_version)
        result_class = getattr(self._call_result, action)
        return result_class(**camel_to_snake_case(fix_phase_keys(response.payload)))

    async def send_frame(self, action: str, payload: dict[str, Any]) -> None:
        """Send a SEND frame (OCPP 2.1: a message that gets no answer), schema-checked."""
        if self.is_closed:
            raise LinkDown
        st = self.station
        validate_frame(SEND, action, payload, "2.1")
        st.stats.messages_sent += 1
        if st.on_message is not None:
            st.on_message("out", action, payload)
        await self._send(encode_send(str(self._unique_id_generator()), action, payload))

    # -- (b) SEND and CALLRESULTERROR frames

    async def route_message(self, raw_msg: str) -> None:
        try:
            msg = json.loads(raw_msg)
        except ValueError:
            msg = None
        if isinstance(msg, list) and msg and msg[0] in (SEND, CALLRESULTERROR):
            self._route_21(msg)
            return
        await super().route_message(raw_msg)

    def _route_21(self, msg: list[Any]) -> None:
        st = self.station
        st.stats.messages_received += 1
        if msg[0] == SEND:
            if len(msg) == 4 and isinstance(msg[2], str) and isinstance(msg[3], dict):
                st.received.append(msg[2])
                if st.on_message is not None:
                    st.on_message("in", msg[2], msg[3])
            else:
                st.error(f"malformed SEND frame: {msg!r:.200}")
            return
        if len(msg) not in (4, 5):
            st.error(f"malformed CALLRESULTERROR frame: {msg!r:.200}")
            return
        message_id, code, description = str(msg[1]), str(msg[2]), str(msg[3])
        details = msg[4] if len(msg) == 5 else {}
        if message_id == self._pending_call_id:
            # An error about a CALL of ours: fail the call instead of waiting for the timeout.
            self._response_queue.put_nowait(CallError(message_id, code, description, details))
        else:
            st.error(f"CALLRESULTERROR {code} for our response {message_id}: {description}")

    # -- (c) CALLs without handler

    async def _handle_call(self, msg: Any) -> Any:
        handlers = self.route_map.get(msg.action)
        if handlers is None or "_on_action" not in handlers:
            error: OCPPError
            if msg.action in _ACTIONS_21:
                error = NotSupportedError(
                    description=f"{msg.action} is not supported by this station",
                    details={"cause": f"no handler for {msg.action}"},
                )
            else:
                error = OcppNotImplemented(
                    description=f"{msg.action} is not an OCPP 2.1 action",
                    details={"cause": f"unknown action {msg.action}"},
                )
            await self._send(msg.create_call_error(error).to_json())
            return None
        return await super()._handle_call(msg)
