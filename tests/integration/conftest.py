"""Shared fixtures of the integration tests.

The binaries are taken from the build directory named by WALRELAY_BUILDDIR
(default: the current directory, which is the top of the build directory
when `make check` runs the tests); the sources (test vectors) from
WALRELAY_SRCDIR (default: two levels above this file).
"""

import os
import pathlib

import pytest


def _builddir():
    return pathlib.Path(os.environ.get("WALRELAY_BUILDDIR") or os.getcwd()).resolve()


def _srcdir():
    env = os.environ.get("WALRELAY_SRCDIR")
    if env:
        return pathlib.Path(env).resolve()
    return pathlib.Path(__file__).resolve().parent.parent.parent


def _binary(name):
    path = _builddir() / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built: run make in the build directory "
                    f"or set WALRELAY_BUILDDIR")
    return path


@pytest.fixture(scope="session")
def builddir():
    return _builddir()


@pytest.fixture(scope="session")
def srcdir():
    return _srcdir()


@pytest.fixture(scope="session")
def vectors_path(srcdir):
    return srcdir / "tests" / "vectors" / "fcw2-vectors.txt"


@pytest.fixture(scope="session")
def walcat():
    """Path of the built walcat."""
    return _binary("walcat")


@pytest.fixture(scope="session")
def walrelay():
    """Path of the built walrelay daemon."""
    return _binary("walrelay")


@pytest.fixture
def workdir(tmp_path):
    """A fresh temporary directory, removed by pytest later."""
    return tmp_path
