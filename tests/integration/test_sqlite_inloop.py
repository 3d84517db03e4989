"""The chassis' store contracts again on `sqlite+inloop` (stdlib sqlite3 on the event loop).

The same test functions as on sqlite+aiosqlite and PostgreSQL, collected here with `db_url`
overridden: one behaviour, proven on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_consumer import (  # noqa: F401 - collected here with this module's db_url
    test_a_failing_event_is_isolated_and_the_rest_of_the_batch_applied,
    test_a_fetched_batch_is_applied_in_one_transaction,
    test_a_handler_that_keeps_failing_goes_to_the_dlq_and_the_consumer_goes_on,
    test_redelivered_event_is_skipped_by_the_inbox,
)
from tests.integration.test_idempotency import (  # noqa: F401
    log_and_db,
    test_concurrent_duplicates_wait_for_the_first_and_replay_its_answer,
    test_concurrent_two_phase_claims_take_the_id_once,
    test_same_request_replays_the_first_answer_and_acts_once,
)
from tests.integration.test_outbox import (  # noqa: F401
    test_committed_events_are_published_in_order_with_headers,
    test_nats_outage_loses_nothing,
    test_relay_killed_between_publish_and_mark_sent,
    test_two_relays_on_one_outbox_publish_each_event_once_in_order,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite+inloop:///{tmp_path / 'store.db'}"
