"""Servers the project starts for itself: NATS and PostgreSQL from pip wheels, on loopback.

`manage.py up` (a laptop's whole stack), the test plugin (apps.mediator.testing), the
benchmarks and the reliability harness all start their servers with these, so a fresh
machine needs neither a system NATS nor a system PostgreSQL. Nothing here imports Django.
"""
