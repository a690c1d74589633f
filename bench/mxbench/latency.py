"""Accept-latency sampler: one SMTP session that times end of DATA -> 250.

Run as `python3 latency.py HOST PORT [--gap-ms N] [--size BYTES] [--to ADDR]`
beside the load generator. It sends one message at a time over one connection
(like `smtp-source -d`), paced by --gap-ms so that it adds little load, and
records for each message the time from writing the final ".CRLF" to reading
the complete final reply. On SIGTERM it finishes the message in flight, sends
QUIT and prints JSON {"count", "failed", "latencies_ms"} to stdout.

It does NOT pipeline, do TLS, or retry a rejected message (it counts it as
failed and goes on).
"""

import argparse
import json
import signal
import socket
import sys
import time

stopping = False


def _on_term(_sig, _frame):
    global stopping
    stopping = True


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self):
        """Reads one complete (possibly multi-line) reply; returns its code."""
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3])

    def command(self, line):
        self.sock.sendall(line + b"\r\n")
        return self.reply()


def body(size, seq):
    header = (
        f"From: <bench@submit.test>\r\nTo: <bench@bench.test>\r\n"
        f"Subject: latency sample {seq}\r\nMessage-ID: <lat{seq}.{time.time_ns()}@submit.test>\r\n\r\n"
    ).encode()
    line = b"x" * 78 + b"\r\n"
    payload = line * (size // len(line) + 1)
    return header + payload[:size - size % len(line)] + b".\r\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--gap-ms", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--to", default="bench@bench.test")
    ap.add_argument("--sender", default="bench@submit.test")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _on_term)

    lat, failed, seq = [], 0, 0
    conn = Conn(args.host, args.port)
    conn.reply()  # banner
    if conn.command(b"EHLO latency.submit.test") // 100 != 2:
        sys.exit("EHLO rejected")
    # Tell the parent we are connected, so it can start the load.
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    while not stopping:
        seq += 1
        ok = conn.command(f"MAIL FROM:<{args.sender}>".encode()) // 100 == 2
        ok = ok and conn.command(f"RCPT TO:<{args.to}>".encode()) // 100 == 2
        ok = ok and conn.command(b"DATA") == 354
        if ok:
            data = body(args.size, seq)
            conn.sock.sendall(data[:-3])
            t0 = time.perf_counter()
            conn.sock.sendall(data[-3:])
            code = conn.reply()
            t1 = time.perf_counter()
            if code // 100 == 2:
                lat.append((t1 - t0) * 1000.0)
            else:
                failed += 1
        else:
            failed += 1
            conn.command(b"RSET")
        time.sleep(args.gap_ms / 1000.0)
    try:
        conn.command(b"QUIT")
    except OSError:
        pass
    json.dump({"count": len(lat), "failed": failed, "latencies_ms": lat}, sys.stdout)


if __name__ == "__main__":
    main()
