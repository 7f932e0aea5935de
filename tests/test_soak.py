"""The soak's machinery on a few visitors (the 100-visitor run is `python -m liveact soak`, docs/RELIABILITY.md)."""

from __future__ import annotations

import pytest

from liveact.serve import heap_bytes
from liveact.soak import many_sessions


@pytest.mark.skipif(heap_bytes() is None, reason="the app logs glibc's heap")
def test_visitors_through_python_app_py_leave_nothing_behind():
    report = many_sessions(sessions=3, warm_up=1, progress=False)
    assert len(report["rss_bytes"]) == 3 and report["temp_change"] == 0.0  # every session's folder is gone
    # one heap line per session the app ended: each visitor's session was ended and its memory released
    assert all(report["heap_in_use_bytes"]) and report["start_heap_in_use_bytes"]
    assert abs(report["heap_in_use_change"]) < 0.05
