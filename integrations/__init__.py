"""Framework integrations, installed as ``perfcallback.integrations``; each is imported on demand.

- ``perfcallback.integrations.lightning``: ``PerfCallback`` for Lightning's ``Trainer``.
- ``perfcallback.integrations.transformers``: ``PerfTrainerCallback`` for the Hugging Face
  ``Trainer``.
- ``perfcallback.integrations.deepspeed``: what ``PerfMonitor`` uses for a DeepSpeed engine
  (imported by the monitor only when it is handed one).

This package imports nothing itself, so importing it never pulls in a framework.
"""
