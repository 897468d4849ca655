"""Writing records in tests the one way the server writes them: through the store's group commit."""

from __future__ import annotations

from collections.abc import Mapping

from maillab_server.store import ForwardStore

COMMIT_TIMEOUT = 30.0  # seconds; a commit takes milliseconds, unless the test found a hang


def deliver(store: ForwardStore, records: Mapping[str, bytes]) -> tuple[str, ...]:
    """Append each domain's record (whole, as `render_record` gives it) and wait until it is durable.

    This is the handler's path: `ForwardStore.submit`, on the commit thread. A failure raises
    the StorageError the handler would turn into a reply.
    """
    return store.submit({domain: [record] for domain, record in records.items()}).result(COMMIT_TIMEOUT)
