"""Who is calling: a client's identity is the subject CN of its TLS certificate.

With mutual TLS, :class:`IdentityInterceptor` refuses a call whose ``x-fedprompt-client-id``
header names another client than the certificate (``PERMISSION_DENIED``), and
:func:`check_caller` refuses a message whose ``client_id`` differs from it. On a plaintext
server (``--insecure``) there is no identity and both pass: the client id is then whatever
the client says, as before.

:func:`status_view` decides what a GetStatus caller sees: the operator certificate
(CN ``operator``, :data:`fedprompt.tls.OPERATOR_IDENTITY`) gets the full view, any other
certificate the silo view of its own identity. A plaintext caller gets the full view:
without identities nothing tells an operator from a silo, and plaintext is an explicit,
logged choice for a trusted loopback (the ``--insecure`` demo).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from fedprompt.errors import PermissionDeniedError
from fedprompt.server import CLIENT_ID_METADATA_KEY, AnyContext, Handler, guard_handler
from fedprompt.tls import HEALTH_METHOD_PREFIX, OPERATOR_IDENTITY, peer_identity
from fedprompt_coordinator.domain import StatusView


def header_client_id(context: AnyContext) -> str:
    """The ``x-fedprompt-client-id`` metadata value of a call, or ``""``."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_METADATA_KEY:
            return str(value)
    return ""


def caller_id(context: AnyContext) -> str:
    """The caller's client id: its certificate CN under TLS, else the metadata header."""
    return peer_identity(context) or header_client_id(context)


def check_caller(context: AnyContext, client_id: str) -> None:
    """Raise PermissionDeniedError if a TLS caller names another client than its certificate.

    Parameters
    ----------
    context
        The call's context (its auth context holds the verified certificate).
    client_id
        The client id a request message names.
    """
    identity = peer_identity(context)
    if identity is not None and client_id != identity:
        raise PermissionDeniedError(
            f"the certificate of {identity!r} may not act for client {client_id!r}"
        )


def status_view(context: AnyContext) -> tuple[StatusView, str]:
    """The GetStatus view of a caller, and whose silo view it is ("" for the full view)."""
    identity = peer_identity(context)
    if identity is None or identity == OPERATOR_IDENTITY:
        return StatusView.FULL, ""
    return StatusView.SILO, identity


class IdentityInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls whose client-id header differs from the certificate's identity."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Wrap the handler so that the header is checked before anything else runs."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_METHOD_PREFIX):
            return handler

        async def check(context: AnyContext) -> None:
            identity = peer_identity(context)
            claimed = header_client_id(context)
            if identity is not None and claimed and claimed != identity:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the certificate of {identity!r} may not act for client {claimed!r}",
                )

        return guard_handler(handler, check)
