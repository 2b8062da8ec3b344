"""Exports of an ownership timeline to other tools' formats.

* :func:`perfetto_trace` / :func:`write_perfetto` -- the Chrome JSON trace-event format that
  ui.perfetto.dev (and chrome://tracing) opens, so s2trace results sit beside Android
  timelines.
"""

from s2trace.export.perfetto import PERFETTO_PID_BASE, perfetto_trace, write_perfetto

__all__ = ["PERFETTO_PID_BASE", "perfetto_trace", "write_perfetto"]
