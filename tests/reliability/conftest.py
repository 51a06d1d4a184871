"""Fixtures of the reliability tests: those of the integration tests
(binaries, work directory) plus a hard timeout and the run's settings.

Settings come from the environment (the make targets set them):
CRASH_CYCLES, CRASH_SEED, CRASH_FSYNC (test_crash.py), SOAK_MINUTES
(test_soak.py), RELIABILITY_REPORT (a file the tests append their figures
to, as JSON lines).
"""

import importlib.util
import json
import os
import pathlib
import signal
import sys

import pytest

_here = pathlib.Path(__file__).resolve().parent
_integration = _here.parent / "integration"
sys.path.insert(0, str(_here))
sys.path.insert(0, str(_integration))

# the integration tests' fixtures, imported (not copied) under another name
_spec = importlib.util.spec_from_file_location("integration_conftest",
                                               _integration / "conftest.py")
_ic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ic)
builddir, srcdir, walcat, walrelay, workdir = (
    _ic.builddir, _ic.srcdir, _ic.walcat, _ic.walrelay, _ic.workdir)

from relayutil import SLOW  # noqa: E402  (after the path is set)


@pytest.fixture(autouse=True)
def hard_timeout(request):
    """Fail a test that runs longer than its limit (marker
    `timeout(seconds)`, default 180 s, times relayutil.SLOW), whatever it
    waits on."""
    m = request.node.get_closest_marker("timeout")
    # under valgrind (make check-valgrind) every wait is SLOW times longer
    limit = int((m.args[0] if m else 180) * SLOW)

    def expired(signum, frame):
        raise TimeoutError(f"test ran longer than {limit} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(limit)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): hard time limit")


@pytest.fixture
def tokfile(workdir):
    p = workdir / "sub.tok"
    p.write_text("rel-tok\n")
    return p


TOKEN = "rel-tok"


def record_figures(name, figures):
    """Print a run's figures and append them to $RELIABILITY_REPORT."""
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(f"\nfigures: {line}")
    path = os.environ.get("RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
