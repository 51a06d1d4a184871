"""make install as a distribution package would do it, the systemd unit
it installs, and the README's two commands as CI runs them."""

import os
import re
import shutil
import subprocess

import pytest

TIMEOUT = 300


def make(builddir, *args):
    env = dict(os.environ)
    # a make started by `make check` must not inherit its job server
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(k, None)
    return subprocess.run(["make", "-s", "-C", str(builddir), *args],
                          capture_output=True, text=True, timeout=TIMEOUT,
                          env=env)


@pytest.fixture(scope="module")
def dirs(builddir):
    r = make(builddir, "print-install-dirs")
    assert r.returncode == 0, r.stderr
    return dict(l.split("=", 1) for l in r.stdout.splitlines())


def files_under(root):
    out = set()
    for d, _, names in os.walk(root):
        for n in names:
            out.add("/" + os.path.relpath(os.path.join(d, n), root))
    return out


@pytest.fixture
def installed(builddir, dirs, tmp_path):
    dest = tmp_path / "dest"
    r = make(builddir, "install", f"DESTDIR={dest}")
    assert r.returncode == 0, r.stdout + r.stderr
    return dest


def test_install_file_list(installed, dirs, srcdir):
    d = dirs
    want = {
        f"{d['bindir']}/walrelay", f"{d['bindir']}/walcat",
        f"{d['mandir']}/man8/walrelay.8", f"{d['mandir']}/man5/walrelay.conf.5",
        f"{d['mandir']}/man1/walcat.1",
        f"{d['sysconfdir']}/walrelay/walrelay.conf",
        f"{d['systemdsystemunitdir']}/walrelay.service",
        f"{d['sysusersdir']}/walrelay.conf", f"{d['tmpfilesdir']}/walrelay.conf",
        f"{d['docdir']}/README.md", f"{d['docdir']}/walrelay.conf",
        f"{d['pkgdatadir']}/grafana/walrelay.json",
        f"{d['pkgdatadir']}/prometheus/walrelay-rules.yml",
    } | {f"{d['docdir']}/{n}" for n in os.listdir(srcdir / "docs")
         if n.endswith(".md")}
    assert files_under(installed) == want
    for b in ("walrelay", "walcat"):
        assert os.access(f"{installed}{d['bindir']}/{b}", os.X_OK)
    conf = f"{installed}{d['sysconfdir']}/walrelay/walrelay.conf"
    assert open(conf).read() == (srcdir / "etc" / "walrelay.conf").read_text()
    users = open(f"{installed}{d['sysusersdir']}/walrelay.conf").read()
    assert re.search(r"^u walrelay - .* /var/lib/walrelay$", users, re.M)
    tmpf = open(f"{installed}{d['tmpfilesdir']}/walrelay.conf").read()
    assert re.search(r"^d /var/lib/walrelay 0750 walrelay walrelay -$", tmpf, re.M)


def test_unit_has_the_configured_paths(installed, dirs):
    unit = open(f"{installed}{dirs['systemdsystemunitdir']}/walrelay.service").read()
    assert not re.search(r"@[a-z_]+@", unit), "unsubstituted @dir@"
    conf = f"{dirs['sysconfdir']}/walrelay/walrelay.conf"
    exe = f"{dirs['bindir']}/walrelay"
    assert f"\nExecStartPre={exe} -c {conf} --check-config\n" in unit
    assert f"\nExecStart={exe} -c {conf}\n" in unit
    assert "\nType=notify\n" in unit and "\nWatchdogSec=" in unit
    # one data directory: the unit's, the shipped config's, tmpfiles.d's
    assert "\nStateDirectory=walrelay\n" in unit
    assert "\nWorkingDirectory=/var/lib/walrelay\n" in unit
    shipped = open(f"{installed}{conf}").read()
    assert re.search(r"^data-dir = /var/lib/walrelay$", shipped, re.M)


def test_unit_security_exposure(installed, dirs):
    """systemd-analyze security rates the installed unit 2.0 or lower."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (./install-deps "
                    "installs the systemd package)")
    unit = f"{installed}{dirs['systemdsystemunitdir']}/walrelay.service"
    r = subprocess.run([tool, "security", "--offline=true", "--no-pager",
                        unit], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for walrelay\.service: "
                  r"([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_existing_config_is_kept(builddir, installed, dirs, srcdir):
    conf = f"{installed}{dirs['sysconfdir']}/walrelay/walrelay.conf"
    mine = "[walrelay]\ndata-dir = /srv/relay\n"
    with open(conf, "w") as f:
        f.write(mine)
    r = make(builddir, "install", f"DESTDIR={installed}")
    assert r.returncode == 0, r.stderr
    assert open(conf).read() == mine
    assert "kept" in r.stdout
    # uninstall leaves the operator's config, removes everything else
    r = make(builddir, "uninstall", f"DESTDIR={installed}")
    assert r.returncode == 0, r.stderr
    assert files_under(installed) == {f"{dirs['sysconfdir']}/walrelay/walrelay.conf"}
    assert open(conf).read() == mine


def test_readme_commands_are_what_ci_runs(srcdir):
    readme = (srcdir / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    first, second = blocks[0], blocks[1]
    # the README starts with them
    assert readme.index(first) < readme.index("\n## ")
    assert first.startswith("./install-deps && ")
    assert first.endswith("&& ./walrelay")
    ci = (srcdir / ".ci" / "run").read_text()
    assert "\n./install-deps\n" in ci
    assert f"({second})" in ci, second
    assert "--enable-asan" in ci
    deps = (srcdir / "install-deps").read_text()
    assert "sudo" in deps and 'id -u' in deps
    for pkg in ("libevent-dev", "libssl-dev", "libzstd-dev", "libxxhash-dev",
                "liblz4-dev", "zlib1g-dev", "check", "openssl",
                "python3-pytest", "python3-zstandard", "libsystemd-dev",
                "libisal-dev", "systemd"):
        assert re.search(rf"(^|\s|\"){re.escape(pkg)}(\s|\"|$)", deps), pkg
