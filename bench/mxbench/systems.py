"""The processes a benchmark run starts: sinks, DNS, Postfix, mxgate.

Every process lives in the run's work directory, listens on a loopback port
chosen by the kernel, logs to a file there and is stopped by stop() (always
called, also on error, by the `with` blocks in trials.py).

  Sink      smtp-sink (Postfix's test MX) or tlssink.py; counts messages
  Unbound   authoritative answers for bench.test: MX -> mx.bench.test -> 127.0.0.1
  Postfix   a private instance (own config dir, loopback only), relayhost = sink;
            settings as in crates/mxgate-testkit/src/postfix.rs
  Mxgate    `mxgate run --config FILE`, ready when it sends sd_notify READY=1

It does NOT touch the system Postfix, /etc, or anything outside the work dir.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_DOMAIN = "bench.test"


class BenchError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_banner(port, proc, what, timeout=30.0):
    """Waits until something on port answers with a 220 banner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        # Nothing to await: these servers signal readiness only by answering.
        time.sleep(0.05)
    raise BenchError(f"{what} did not answer on port {port} within {timeout}s")


def stop_process(proc, sig=signal.SIGTERM, timeout=40.0):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Sink:
    """smtp-sink (kind "smtp-sink") or tlssink.py (kind "py", "py-tls")."""

    def __init__(self, workdir, name, kind="smtp-sink", certs=None):
        self.port = free_port()
        self.out_path = os.path.join(workdir, f"{name}.counts")
        self.kind = kind
        out = open(self.out_path, "wb")
        if kind == "smtp-sink":
            # -c: running counters; -u: drop root; backlog 1024.
            cmd = ["smtp-sink", "-u", "nobody", "-c", "-4", "-m", "1024", f"127.0.0.1:{self.port}", "1024"]
        else:
            cmd = [sys.executable, os.path.join(HERE, "tlssink.py"), str(self.port)]
            if kind == "py-tls":
                cmd += ["--cert", certs[0], "--key", certs[1]]
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        wait_banner(self.port, self.proc, name)
        self.pid = self.proc.pid

    def counters(self):
        """The latest {"mesg": n, ...} record the sink wrote."""
        with open(self.out_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 512))
            tail = f.read().decode(errors="replace")
        records = [r for r in tail.split("\r") if "mesg=" in r]
        if not records:
            return {"mesg": 0}
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", records[-1])}

    def delivered(self):
        return self.counters().get("mesg", 0)

    def stop(self):
        stop_process(self.proc)


class Unbound:
    """A local unbound that answers for bench.test only (static local zone)."""

    def __init__(self, workdir):
        self.port = free_port()
        conf = os.path.join(workdir, "unbound.conf")
        with open(conf, "w") as f:
            f.write(f"""server:
    interface: 127.0.0.1@{self.port}
    port: {self.port}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    num-threads: 1
    local-zone: "{TEST_DOMAIN}." static
    local-data: "{TEST_DOMAIN}. 3600 IN MX 10 mx.{TEST_DOMAIN}."
    local-data: "mx.{TEST_DOMAIN}. 3600 IN A 127.0.0.1"
remote-control:
    control-enable: no
""")
        log = open(os.path.join(workdir, "unbound.log"), "wb")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", conf], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_ready()

    def _wait_ready(self):
        # A minimal DNS query for bench.test MX; ready once it gets any answer.
        query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                 + b"".join(bytes([len(p)]) + p.encode() for p in TEST_DOMAIN.split("."))
                 + b"\x00\x00\x0f\x00\x01")
        deadline = time.monotonic() + 20
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError("unbound exited; see unbound.log")
                s.sendto(query, ("127.0.0.1", self.port))
                try:
                    if s.recv(512)[:2] == b"\x12\x34":
                        return
                except OSError:
                    pass
        raise BenchError("unbound did not answer")

    def stop(self):
        stop_process(self.proc)


class Postfix:
    """A private Postfix relaying everything to [127.0.0.1]:relay_port."""

    def __init__(self, workdir, relay_port, name="postfix", tls=False, tls_reuse=False):
        self.root = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.root, "queue"))
        os.makedirs(os.path.join(self.root, "data"))
        os.chmod(self.root, 0o755)
        shutil.chown(os.path.join(self.root, "data"), "postfix")
        self.port = free_port()
        tls_level = "may" if tls else "none"
        with open(os.path.join(self.root, "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {self.root}/queue
data_directory = {self.root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = submit.test
mydomain = submit.test
myorigin = submit.test
mydestination =
local_transport = error:no local delivery
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtp_tls_security_level = {tls_level}
smtp_tls_connection_reuse = {"yes" if tls_reuse else "no"}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
biff = no
maillog_file = {self.root}/maillog
maillog_file_prefixes = {self.root}
smtp_connect_timeout = 5s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
""")
        with open(os.path.join(self.root, "master.cf"), "w") as f:
            f.write(f"""127.0.0.1:{self.port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
tlsproxy  unix  -       -       n       -       0       tlsproxy
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000    0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
showq     unix  n       -       n       -       -       showq
""")
        self.proc = subprocess.Popen(
            ["postfix", "-c", self.root, "start-fg"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_banner(self.port, self.proc, "postfix")
        self.pid = self.proc.pid

    def stop(self):
        subprocess.run(["postfix", "-c", self.root, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop_process(self.proc)


class Mxgate:
    """`mxgate run` with a generated config; start() returns the seconds to READY=1."""

    def __init__(self, binary, workdir, sink_port, dns_port, name="mxgate", level="may",
                 retry="1m", listen_port=None):
        self.binary = binary
        self.dir = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.dir, "queue"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "policy"), exist_ok=True)
        self.port = listen_port or free_port()
        self.config = os.path.join(self.dir, "mxgate.toml")
        with open(self.config, "w") as f:
            f.write(f"""[server]
hostname = "relay.bench.test"

[listener]
listen = ["127.0.0.1:{self.port}"]

[queue]
path = "{self.dir}/queue"
retry_intervals = ["{retry}"]

[delivery]
smtp_port = {sink_port}
connect_timeout = "5s"

[dns]
nameservers = ["127.0.0.1:{dns_port}"]
dnssec = "off"

[policy]
default = "{level}"
cache_path = "{self.dir}/policy"

[metrics]
listen = "127.0.0.1:{free_port()}"

[control]
socket = "{self.dir}/control.sock"
""")
        self.proc = None
        self.pid = None

    def start(self, timeout=600.0):
        notify_path = os.path.join(self.dir, "notify.sock")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        ctl = os.path.join(self.dir, "control.sock")
        if os.path.exists(ctl):
            os.unlink(ctl)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(notify_path)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path)
            # Logging stays at mxgate's default (info), as Postfix logs every message too.
            log = open(os.path.join(self.dir, "mxgate.log"), "ab")
            t0 = time.monotonic()
            self.proc = subprocess.Popen([self.binary, "run", "--config", self.config], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            self.pid = self.proc.pid
            deadline = t0 + timeout
            while True:
                notify.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
                try:
                    msg = notify.recv(4096)
                    if b"READY=1" in msg.split(b"\n"):
                        return time.monotonic() - t0
                except socket.timeout:
                    pass
                if self.proc.poll() is not None:
                    raise BenchError(f"mxgate exited with {self.proc.returncode}; see {self.dir}/mxgate.log")
                if time.monotonic() > deadline:
                    raise BenchError(f"mxgate not ready after {timeout}s")

    def stop(self):
        stop_process(self.proc)
