"""Coded domain errors and the one table that maps them to gRPC status codes.

Domain code raises a :class:`FedPromptError` subclass; it never touches gRPC. The
:class:`~fedprompt.server.ErrorMappingInterceptor` turns the error into the status code
from :data:`STATUS_BY_CODE` and the error's public message, and logs it. Anything else
that escapes a servicer becomes ``INTERNAL`` with a generic message (details are logged,
never sent).
"""

from __future__ import annotations

import enum

import grpc


class ErrorCode(enum.StrEnum):
    """Stable machine-readable codes of fedprompt's domain errors."""

    INVALID_ARGUMENT = "invalid_argument"
    UNKNOWN_CLIENT = "unknown_client"
    WRONG_ROUND = "wrong_round"
    NOT_PARTICIPANT = "not_participant"
    MODEL_MISMATCH = "model_mismatch"
    SHAPE_MISMATCH = "shape_mismatch"
    NON_FINITE = "non_finite"
    CORRUPT_PAYLOAD = "corrupt_payload"
    TRUNCATED_PAYLOAD = "truncated_payload"
    TOO_LARGE = "too_large"
    CONFLICT = "conflict"
    NOT_READY = "not_ready"
    UNAVAILABLE = "unavailable"
    PERMISSION_DENIED = "permission_denied"
    BUSY = "busy"
    OVER_CAPACITY = "over_capacity"
    IDLE_TIMEOUT = "idle_timeout"


STATUS_BY_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNKNOWN_CLIENT: grpc.StatusCode.NOT_FOUND,
    ErrorCode.WRONG_ROUND: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.NOT_PARTICIPANT: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.MODEL_MISMATCH: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.SHAPE_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NON_FINITE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.CORRUPT_PAYLOAD: grpc.StatusCode.DATA_LOSS,
    ErrorCode.TRUNCATED_PAYLOAD: grpc.StatusCode.DATA_LOSS,
    ErrorCode.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.NOT_READY: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.BUSY: grpc.StatusCode.ABORTED,
    ErrorCode.OVER_CAPACITY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.IDLE_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class FedPromptError(Exception):
    """Base class of every error fedprompt's domain code raises on purpose.

    Parameters
    ----------
    message
        Public message: safe to send to the peer (no secrets, no tensors, no metadata).
    """

    code: ErrorCode = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def status_code(self) -> grpc.StatusCode:
        """The gRPC status code this error is answered with."""
        return STATUS_BY_CODE[self.code]


class InvalidArgumentError(FedPromptError):
    """A request field is malformed or out of range."""

    code = ErrorCode.INVALID_ARGUMENT


class UnknownClientError(FedPromptError):
    """The caller has not joined the federation."""

    code = ErrorCode.UNKNOWN_CLIENT


class WrongRoundError(FedPromptError):
    """The request names a round that is not open for this action."""

    code = ErrorCode.WRONG_ROUND


class NotParticipantError(FedPromptError):
    """The client is not a participant of the round it addresses."""

    code = ErrorCode.NOT_PARTICIPANT


class ModelMismatchError(FedPromptError):
    """The client's model, prompt layout or label set differs from the federation's."""

    code = ErrorCode.MODEL_MISMATCH


class ShapeMismatchError(FedPromptError):
    """A tensor's name, dtype or shape differs from the round's spec."""

    code = ErrorCode.SHAPE_MISMATCH


class NonFiniteError(FedPromptError):
    """A tensor holds NaN or infinity."""

    code = ErrorCode.NON_FINITE


class CorruptPayloadError(FedPromptError):
    """A chunk or payload failed its checksum, or the bytes are not valid safetensors."""

    code = ErrorCode.CORRUPT_PAYLOAD


class TruncatedPayloadError(FedPromptError):
    """A chunked payload ended before all announced bytes or chunks arrived."""

    code = ErrorCode.TRUNCATED_PAYLOAD


class TooLargeError(FedPromptError):
    """A message or payload exceeds a configured size limit."""

    code = ErrorCode.TOO_LARGE


class ConflictError(FedPromptError):
    """A different submission for the same round and client was already accepted."""

    code = ErrorCode.CONFLICT


class NotReadyError(FedPromptError):
    """The federation is not in a state that allows the request yet."""

    code = ErrorCode.NOT_READY


class UpstreamUnavailableError(FedPromptError):
    """A service this one depends on cannot be reached."""

    code = ErrorCode.UNAVAILABLE


class PermissionDeniedError(FedPromptError):
    """The authenticated caller may not act for the client (or call the method) it names."""

    code = ErrorCode.PERMISSION_DENIED


class BusyError(FedPromptError):
    """The caller already has a call of this kind open (one upload per client at a time).

    Answered ``ABORTED``: a concurrency conflict, not a bad request; retrying after the
    open call ended succeeds.
    """

    code = ErrorCode.BUSY


class OverCapacityError(FedPromptError):
    """A shared budget of the server (spool disk, upload memory) cannot take the request now."""

    code = ErrorCode.OVER_CAPACITY


class IdleTimeoutError(FedPromptError):
    """A client stream sent nothing for longer than the server's idle timeout."""

    code = ErrorCode.IDLE_TIMEOUT
