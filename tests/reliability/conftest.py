"""The reliability tier: fault injection and hostile input.

The malformed-message test reuses the integration tier's real NATS server and
`run_consumer` children (tests/integration/conftest.py); the load-and-faults test
brings its own whole stack (tests/reliability/stack.py).
"""

from tests.integration.conftest import (  # noqa: F401 (fixtures, found by pytest by name)
    fresh_streams,
    nats_server,
    nats_settings,
    pytest_runtest_makereport,
    workers,
)
