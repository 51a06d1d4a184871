"""A resuming subscriber as a separate process, so that a test can stop it
with SIGSTOP: python3 subproc_sub.py ADDR TOKEN FROM OUTFILE

Connects with a 4 KiB receive buffer, sends FCWAL-SUB/1, writes the reply
line to OUTFILE.reply and every byte after it to OUTFILE, and exits when
the relay closes the connection (status 0) or on an error (status 1)."""

import socket
import sys


def main():
    addr, token, frm, out = sys.argv[1:5]
    host, port = addr.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect((host, int(port)))
    s.sendall(f"FCWAL-SUB/1 {token} {frm}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            return 1
        line += c
    with open(out + ".reply", "wb") as f:
        f.write(line)
    with open(out, "wb") as f:
        while True:
            try:
                b = s.recv(4096)
            except OSError:
                break
            if not b:
                break
            f.write(b)
            f.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
