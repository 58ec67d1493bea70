"""Test helpers for projects built on the mediator, and the pytest plugin (`plugin.py`).

The servers themselves (NATS, PostgreSQL, free ports, polling) are in
apps.mediator.servers; this package is what a test suite adds on top.
"""
