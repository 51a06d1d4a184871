#!/bin/sh
# Run the reliability tests (pytest) against the binaries of a build:
#   WALRELAY_BUILDDIR=/path/to/build tests/reliability/run-pytest.sh [pytest args]
# make check runs the quick ones (oracle, network faults, a short crash
# loop); make check-crash CYCLES=N and make soak SOAK_MINUTES=N the long ones.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
: "${WALRELAY_BUILDDIR:=$(pwd)}"
: "${WALRELAY_SRCDIR:=$(cd "$here/../.." && pwd)}"
export WALRELAY_BUILDDIR WALRELAY_SRCDIR

py=/usr/bin/python3
if ! "$py" -c 'import pytest' 2>/dev/null; then
	echo "run-pytest.sh: $py cannot import pytest:" \
	    "install the Debian package python3-pytest" >&2
	exit 1
fi
# -s: the crash loop and the soak print their figures
exec "$py" -m pytest -q -s -p no:cacheprovider "$@" "$WALRELAY_SRCDIR/tests/reliability"
