"""The soak's machinery on a few visitors (the 100-visitor run is `python -m liveact soak`, docs/RELIABILITY.md)."""

from __future__ import annotations

import ctypes
import threading

import pytest
import torch

from liveact.serve import _MKL, heap_bytes, release_free_memory
from liveact.soak import many_sessions


@pytest.mark.skipif(heap_bytes() is None, reason="the app logs glibc's heap")
def test_visitors_through_python_app_py_leave_nothing_behind():
    report = many_sessions(sessions=3, warm_up=1, progress=False)
    assert len(report["rss_bytes"]) == 3 and report["temp_change"] == 0.0  # every session's folder is gone
    # one heap line per session the app ended: each visitor's session was ended and its memory released
    assert all(report["heap_in_use_bytes"]) and report["start_heap_in_use_bytes"]
    assert abs(report["heap_in_use_change"]) < 0.05


@pytest.mark.skipif(_MKL is None, reason="torch's CPU library has no MKL here")
def test_a_finished_session_gives_back_mkls_gemm_buffers():
    """MKL's buffer pool grows with the threads that multiply at once (a session's generator and its read-ahead
    decode): ~4 MiB each, kept for good unless freed -- the soak's one-off heap step before they were."""
    _MKL.mkl_serv_mem_stat.restype = ctypes.c_int64
    a, b = torch.randn(512, 2048), torch.randn(2048, 512)
    threads = [threading.Thread(target=lambda: [a @ b for _ in range(20)]) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    buffers = ctypes.c_int(0)
    assert _MKL.mkl_serv_mem_stat(ctypes.byref(buffers)) > 2**20 and buffers.value >= 1
    release_free_memory()
    assert _MKL.mkl_serv_mem_stat(ctypes.byref(buffers)) == 0 and buffers.value == 0
