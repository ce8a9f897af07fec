"""Session-wide test settings: a private cache and no progress bars.

Every test run gets its own ``TRAITLENS_CACHE`` (so tests never read or write ``~/.cache/traitlens``,
and what one session pretrains, e.g. the embedded backbones, is made once and shared by the tests
that need it), and progress bars are off.
"""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config):
    if "TRAITLENS_TEST_CACHE" in os.environ:  # reuse a cache across runs while developing
        os.environ["TRAITLENS_CACHE"] = os.environ["TRAITLENS_TEST_CACHE"]
    else:
        os.environ["TRAITLENS_CACHE"] = tempfile.mkdtemp(prefix="traitlens-test-cache-")
    os.environ["TRAITLENS_QUIET"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
