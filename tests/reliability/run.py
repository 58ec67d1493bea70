"""The full load-and-faults run, from the command line.

    python -m tests.reliability.run --orders 3000 --duration 300

Starts its own PostgreSQL cluster, a 3-node NATS JetStream cluster (or with --transport
redis one Redis server, AOF on), gunicorn and a
consumer per context (loopback only), drives the orders through the REST API while
killing and restarting each part in turn, then checks that nothing was lost,
duplicated or left stuck. Prints the table; exits 1 when an invariant broke.
"""

import argparse
import sys

from tests.reliability import checks
from tests.reliability.harness import Config, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=Config.orders, help="orders to place (default %(default)s)")
    parser.add_argument(
        "--duration", type=float, default=Config.duration, help="seconds to spread them over (default %(default)s)"
    )
    parser.add_argument("--faults", type=int, default=0, help="faults to inject (default: one per ~20 s, at least 6)")
    parser.add_argument(
        "--settle", type=float, default=Config.settle, help="seconds allowed to finish afterwards (default %(default)s)"
    )
    parser.add_argument(
        "--db-outage",
        type=float,
        default=Config.db_outage,
        help="seconds the PostgreSQL outage fault lasts (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=Config.seed, help="random seed of the mix (default %(default)s)")
    parser.add_argument(
        "--transport", choices=["nats", "redis"], default="nats", help="message system (default %(default)s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with every process's log")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.duration <= 0:
        parser.error("--orders and --duration must be positive")

    config = Config(
        orders=args.orders,
        duration=args.duration,
        faults=args.faults,
        settle=args.settle,
        db_outage=args.db_outage,
        seed=args.seed,
        keep=args.keep,
        transport=args.transport,
    )
    report = run(config, say=lambda line: print(line, flush=True))
    print()
    print("\n".join(report.fault_log))
    print()
    print(checks.render(report))
    if not report.ok:
        print("\nviolations:", *report.violations[:50], sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
