"""Framework integrations, installed as ``perfcallback.integrations``; each is imported on demand.

- ``perfcallback.integrations.lightning``: ``PerfCallback`` for Lightning's ``Trainer``.

This package imports nothing itself, so importing it never pulls in a framework.
"""
