"""The load-and-faults run in CI: a smaller, bounded mix, every fault kind at least once.

The full run is `python -m tests.reliability.run --orders 3000 --duration 300`
(docs/reliability.md has its figures); this one drives 300 orders over 90 s through
its own PostgreSQL, 3-node NATS cluster (or one Redis server), gunicorn and consumers, and fails naming
every invariant that broke. Its PostgreSQL outage lasts 70 s: longer than MAX_ATTEMPTS x
ACK_WAIT here (5 x 6 s) and than a saga step's timeout (60 s); the full run's lasts 180 s.
"""

import pytest

from tests.reliability import checks
from tests.reliability.faults import kinds_for
from tests.reliability.harness import Config, run

pytestmark = pytest.mark.reliability


@pytest.mark.timeout(720)
@pytest.mark.parametrize("transport", ["nats", "redis"])
def test_orders_under_faults_are_neither_lost_nor_duplicated_nor_stuck(transport, capsys):
    report = run(Config(orders=300, duration=90, settle=120, db_outage=70, transport=transport))

    with capsys.disabled():  # the table, shown in every run
        print("\n" + "\n".join(report.fault_log) + "\n\n" + checks.render(report))
    assert set(report.faults) == set(kinds_for(transport)), f"every kind of fault must be injected: {report.fault_log}"
    assert report.orders >= 290, f"only {report.orders} of 300 orders were accepted"
    assert report.poison_sent > 0, "the poison storm sent nothing"
    assert report.ok, "\n".join(report.violations[:40])
