"""How long a flow run from the command line waits for Prefect's local API to start.

Without PREFECT_API_URL, Prefect starts a temporary API server on SQLite and waits 20 s for it by default. Its
first start on a fresh PREFECT_HOME migrates the database: 20-23 s on an idle 2-core machine, so a fresh laptop
or a loaded CI runner failed with "Timed out while attempting to connect to ephemeral Prefect API server". A
longer wait costs nothing when the server is quicker: the wait ends at its first healthy answer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

STARTUP_WAIT_S = 180


@contextmanager
def patient_local_api() -> Iterator[None]:
    """Wait at least STARTUP_WAIT_S for the local API; a longer wait the user set is kept."""
    if PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() >= STARTUP_WAIT_S:
        yield
        return
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: STARTUP_WAIT_S}):
        yield
