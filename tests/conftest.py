"""Shared test setup: one kernel cache for the whole session, so each kernel compiles once.

The cache lives in the temp directory, one per user: its files are loaded as they are (Numba's
index and machine code, the stored derivative forms), so no other user may write to it.
"""

import getpass
import os
import tempfile

_user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
os.environ.setdefault(
    "GRAPHNN_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"graphnn-test-cache-{_user}")
)
# Training runs stepwise (shared step kernels) and never starts a background compile of the fused
# epoch: hundreds of fits would each start one.  tests/test_stepwise.py checks, bit for bit on
# every case, that the fused epoch computes what the stepwise one does, and tests the switch.
os.environ.setdefault("GRAPHNN_FUSED", "never")


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        help="tests/test_fuzz.py: the deep run (thousands of random graphs, a random seed)",
    )
