"""Read the coordinator's whole status, page by page, into one ``GetStatusResponse``.

One GetStatus answer carries a page: at most the coordinator's ``status_page_clients``
clients (each round record holds the records of these clients only) and
``status_page_rounds`` round records, and never more than the message limit. A tool that
wants everything (the report of ``fedprompt up``, the benches) walks the pages with
:class:`StatusPager` and gets them merged: every client, every round record, each with the
records of every client the caller may see.

The pager is independent of the transport: :func:`read_full_status` drives it over a
blocking stub, :func:`read_full_status_async` over an aio stub.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fedprompt.v1 import coordinator_pb2

__all__ = ["StatusPager", "StatusPagingError", "read_full_status", "read_full_status_async"]


class StatusPagingError(RuntimeError):
    """The status cannot be read whole: a page made no progress even at one client."""


class StatusPager:
    """Walks the pages of GetStatus and merges them.

    Use: ``while (request := pager.next_request()) is not None: pager.add(stub.GetStatus(request))``,
    then :meth:`result`.
    """

    def __init__(self) -> None:
        self._clients_after = ""
        self._max_clients = 0
        self._next_record: int | None = 0
        self._merged: coordinator_pb2.GetStatusResponse | None = None
        self._records: dict[int, coordinator_pb2.RoundSummary] = {}
        self._done = False

    def next_request(self) -> coordinator_pb2.GetStatusRequest | None:
        """The request of the next page, or None when every page was read."""
        if self._done:
            return None
        return coordinator_pb2.GetStatusRequest(
            clients_after=self._clients_after,
            max_clients=self._max_clients,
            first_round_record=self._next_record or 0,
        )

    def add(self, page: coordinator_pb2.GetStatusResponse) -> None:
        """Merge one answer (to :meth:`next_request`) and decide the next request.

        Raises
        ------
        StatusPagingError
            If a page of one client holds no round record although some remain (one round
            record is larger than the message limit).
        """
        if self._merged is None:
            self._merged = coordinator_pb2.GetStatusResponse()
            self._merged.CopyFrom(page)
            del self._merged.clients[:]
            del self._merged.rounds[:]
            self._merged.setup_bytes_up.clear()
            self._merged.setup_bytes_down.clear()
        merged = self._merged
        first_page_of_clients = self._next_record == 0
        if first_page_of_clients:
            merged.clients.extend(page.clients)
            merged.setup_bytes_up.update(page.setup_bytes_up)
            merged.setup_bytes_down.update(page.setup_bytes_down)
        for index, record in enumerate(page.rounds, start=page.first_round_record):
            known = self._records.get(index)
            if known is None:
                self._records[index] = known = coordinator_pb2.RoundSummary()
                known.CopyFrom(record)
            else:
                seen = {c.client_id for c in known.clients}
                known.clients.extend(c for c in record.clients if c.client_id not in seen)
        next_record = page.first_round_record + len(page.rounds)
        if next_record < page.round_records_total:
            if not page.rounds:
                if page.view == coordinator_pb2.STATUS_VIEW_SILO or len(page.clients) <= 1:
                    raise StatusPagingError(
                        f"round record {next_record} does not fit in one GetStatus answer"
                    )
                self._max_clients = max(1, len(page.clients) // 2)  # smaller page, more room
                self._reset_clients_page(merged, page)
                return
            self._next_record = next_record
            return
        if page.next_clients_after:
            self._clients_after = page.next_clients_after
            self._next_record = 0
            return
        self._done = True
        merged.rounds.extend(self._records[i] for i in sorted(self._records))
        merged.truncated = False
        merged.first_round_record = 0
        merged.next_clients_after = ""

    def _reset_clients_page(
        self, merged: coordinator_pb2.GetStatusResponse, page: coordinator_pb2.GetStatusResponse
    ) -> None:
        """Forget the clients of a page that is read again, from its first round record."""
        drop = {c.client_id for c in page.clients}
        kept = [c for c in merged.clients if c.client_id not in drop]
        del merged.clients[:]
        merged.clients.extend(kept)
        for cid in drop:
            merged.setup_bytes_up.pop(cid, None)
            merged.setup_bytes_down.pop(cid, None)
        self._next_record = 0

    def result(self) -> coordinator_pb2.GetStatusResponse:
        """The merged status (every page read).

        Raises
        ------
        RuntimeError
            If pages remain to be read.
        """
        if not self._done or self._merged is None:
            raise RuntimeError("the status has pages left to read")
        return self._merged


def read_full_status(
    get: Callable[[coordinator_pb2.GetStatusRequest], coordinator_pb2.GetStatusResponse],
) -> coordinator_pb2.GetStatusResponse:
    """Every page of the status through ``get`` (e.g. ``stub.GetStatus`` with a timeout)."""
    pager = StatusPager()
    while (request := pager.next_request()) is not None:
        pager.add(get(request))
    return pager.result()


async def read_full_status_async(
    get: Callable[[coordinator_pb2.GetStatusRequest], Awaitable[coordinator_pb2.GetStatusResponse]],
) -> coordinator_pb2.GetStatusResponse:
    """Every page of the status through an aio ``get``."""
    pager = StatusPager()
    while (request := pager.next_request()) is not None:
        pager.add(await get(request))
    return pager.result()
