"""The container files: what the build context leaves out, the health
check, the ports compose publishes, and (where a container engine runs)
the image itself."""

import re
import shutil
import subprocess
import uuid

import pytest

TIMEOUT = 1800


def test_dockerignore(srcdir):
    rules = [l.strip() for l in (srcdir / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    for must in (".git", "walrelay-data/", "build*/", "**/*.o", "/walrelay",
                 "/walcat", "config.status"):
        assert must in rules, must


def test_dockerfile_healthcheck_and_data_dir(srcdir):
    df = (srcdir / "docker" / "Dockerfile").read_text()
    m = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", df, re.M)
    assert m, "no HEALTHCHECK"
    cmd = m.group(1)
    assert '"/usr/local/bin/walcat", "health"' in cmd and "7633" in cmd
    assert "curl" not in cmd and "wget" not in cmd
    assert "VOLUME /var/lib/walrelay" in df
    assert "COPY etc/walrelay.conf /etc/walrelay/walrelay.conf" in df
    # the data directory is the shipped config's, nowhere overridden
    assert "--data-dir" not in df
    assert re.search(r"^data-dir = /var/lib/walrelay$",
                     (srcdir / "etc" / "walrelay.conf").read_text(), re.M)


def test_compose_status_port_on_loopback(srcdir):
    text = (srcdir / "docker" / "compose.yaml").read_text()
    ports = re.findall(r'^\s*-\s*"([^"]+)"', text, re.M)
    assert "127.0.0.1:7633:7633" in ports, ports
    # the unauthenticated HTTP port is published nowhere else
    assert [p for p in ports if p.endswith(":7633")] == ["127.0.0.1:7633:7633"]
    assert "walrelay-data:/var/lib/walrelay" in text


def engine():
    for tool in ("docker", "podman"):
        path = shutil.which(tool)
        if path and subprocess.run([path, "info"], capture_output=True,
                                   timeout=60).returncode == 0:
            return path
    return None


def test_image_builds_and_gets_healthy(srcdir):
    tool = engine()
    if tool is None:
        pytest.skip("no container engine runs here (docker info and "
                    "podman info fail): the image is not built")
    tag = f"walrelay-test:{uuid.uuid4().hex[:12]}"
    r = subprocess.run([tool, "build", "-f", str(srcdir / "docker" / "Dockerfile"),
                        "-t", tag, str(srcdir)], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    name = f"walrelay-test-{uuid.uuid4().hex[:12]}"
    try:
        r = subprocess.run([tool, "run", "-d", "--name", name,
                            "-e", "WALRELAY_PUBLISH_TOKENS=" + "p" * 32,
                            "-e", "WALRELAY_SUBSCRIBE_TOKENS=" + "s" * 32,
                            tag], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        # the HEALTHCHECK itself, run as the engine runs it
        r = subprocess.run([tool, "exec", name, "/usr/local/bin/walcat",
                            "health", "127.0.0.1:7633"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run([tool, "inspect", "--format",
                            "{{json .Config.Healthcheck}}", tag],
                           capture_output=True, text=True, timeout=60)
        assert "walcat" in r.stdout and "health" in r.stdout
    finally:
        subprocess.run([tool, "rm", "-f", name], capture_output=True, timeout=120)
        subprocess.run([tool, "rmi", "-f", tag], capture_output=True, timeout=120)
