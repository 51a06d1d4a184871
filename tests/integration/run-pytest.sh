#!/bin/sh
# Run the integration tests (pytest) against the binaries of a build.
# make check runs this from the top of the build directory; by hand:
#   WALRELAY_BUILDDIR=/path/to/build tests/integration/run-pytest.sh [pytest args]
# They need Debian's pytest for the system python: apt-get install python3-pytest
set -eu

here=$(cd "$(dirname "$0")" && pwd)
: "${WALRELAY_BUILDDIR:=$(pwd)}"
: "${WALRELAY_SRCDIR:=$(cd "$here/../.." && pwd)}"
export WALRELAY_BUILDDIR WALRELAY_SRCDIR

py=/usr/bin/python3
if ! "$py" -c 'import pytest' 2>/dev/null; then
	echo "run-pytest.sh: $py cannot import pytest:" \
	    "install the Debian package python3-pytest" \
	    "(apt-get install python3-pytest)" >&2
	exit 1
fi
# no cache directory: the source tree may be read-only
exec "$py" -m pytest -q -p no:cacheprovider "$@" "$WALRELAY_SRCDIR/tests/integration"
