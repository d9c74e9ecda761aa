#!/usr/bin/env python3
"""Facade streaming benchmark: prints figures and a Markdown table, asserts nothing.

A random blob (BENCH_BLOB_MIB MiB, 1024 by default) sits on a plain-HTTP upstream (nginx
serving the file). Mutual-TLS servers stream it to curl clients holding a device
certificate, in the same run, each over HTTP/1.1 and HTTP/2. Misses (every byte from the
upstream):

  - meshanics-facade (release build) with its cache off (`[cache] max_bytes = 0`), so every
    pull is a real miss, verifying every byte against the digest;
  - nginx (Debian) as an mTLS reverse proxy, verifying nothing.

Hits (the bytes from the server's own disk):

  - meshanics-facade with its cache on (the default), serving the blob from its cache after
    the one fill of the uncounted warm-up pull;
  - nginx serving the same file from disk over mTLS (`ssl_verify_client on`, a `root`);
  - the CNCF distribution registry (Debian's docker-registry) in proxy (pull-through cache)
    mode, which stores the blob on its disk on the first pull and serves later pulls from
    there.

Per proxy and protocol: one client, BENCH_ROUNDS rounds (5), after one warm-up pull that is
not counted: MB/s and time to first byte (curl's time_starttransfer, handshake included),
median; CPU seconds the proxy spent per GiB; then BENCH_CLIENTS (50) clients at once for
BENCH_CONCURRENT_SECONDS (10) seconds, BENCH_ROUNDS rounds: aggregate MB/s (median) and
time to first byte p50/p99 over every client of every round; peak RSS of the proxy's
processes (sampled every 100 ms). Everything runs on 127.0.0.1 and is removed at the end.

    bench/facade.py                     # full run
    BENCH_BLOB_MIB=256 BENCH_ROUNDS=2 bench/facade.py   # a quick look
    bench/facade.py --json FILE          # also write the figures as JSON
    MESHANICS_FACADE_BIN=path bench/facade.py   # that facade binary instead of building one
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BLOB_MIB = int(os.environ.get("BENCH_BLOB_MIB", "1024"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "50"))
CONCURRENT_SECONDS = int(os.environ.get("BENCH_CONCURRENT_SECONDS", "10"))
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
REGISTRY = os.environ.get("REGISTRY", "/usr/bin/docker-registry")
REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / TICKS


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def wait_port(port, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port}")


class Sampler(threading.Thread):
    """Samples the summed RSS of some processes every 100 ms; keeps the peak."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, rss_kib(self.pids))
            time.sleep(0.1)

    def stop(self):
        self.done.set()
        self.join()
        return self.peak


def curl(work, url, proto, max_time=None):
    args = ["curl", "-s", "-o", "/dev/null", "--cacert", f"{work}/ca.crt",
            "--cert", f"{work}/device.crt", "--key", f"{work}/device.key",
            "--http1.1" if proto == "h1" else "--http2",
            "-w", "%{speed_download} %{size_download} %{http_code} %{time_starttransfer} %{http_version}"]
    if max_time:
        args += ["--max-time", str(max_time)]
    return subprocess.Popen(args + [url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def parse(out):
    speed, size, code, ttfb, version = out.split()
    return float(speed), int(size), code, float(ttfb), version


def pct(values, p):
    values = sorted(values)
    if not values:
        return 0.0
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


def measure(work, name, url, pids, proto, size):
    # Warm-up, not counted (and the registry's cache fill).
    out, _ = curl(work, url, proto).communicate()
    _, got, code, _, version = parse(out)
    if code != "200" or got != size:
        raise SystemExit(f"bench: {name} {proto} warm-up failed: HTTP {code}, {got} bytes")
    want = "1.1" if proto == "h1" else "2"
    if version != want:
        raise SystemExit(f"bench: {name} answered HTTP/{version}, asked for {want}")
    speeds, ttfbs, cpu = [], [], 0.0
    for _ in range(ROUNDS):
        before = cpu_seconds(pids())
        out, _ = curl(work, url, proto).communicate()
        cpu += cpu_seconds(pids()) - before
        speed, got, code, ttfb, _ = parse(out)
        if code != "200" or got != size:
            raise SystemExit(f"bench: {name} {proto} failed: HTTP {code}, {got} bytes")
        speeds.append(speed)
        ttfbs.append(ttfb)
    agg, many_ttfb = [], []
    sampler = Sampler(pids())
    sampler.start()
    for _ in range(ROUNDS):
        start = time.time()
        procs = [curl(work, url, proto, CONCURRENT_SECONDS) for _ in range(CLIENTS)]
        total = 0
        for p in procs:
            out, _ = p.communicate()
            try:
                _, got, code, ttfb, _ = parse(out)
            except ValueError:
                continue
            total += got
            if ttfb > 0:
                many_ttfb.append(ttfb)
        agg.append(total / max(time.time() - start, 1e-9))
    peak = sampler.stop()
    row = {
        "proxy": name, "protocol": proto,
        "mbps": statistics.median(speeds) / 1e6,
        "ttfb_ms": statistics.median(ttfbs) * 1e3,
        "cpu_s_per_gib": cpu / (ROUNDS * size / 2**30),
        "clients_mbps": statistics.median(agg) / 1e6,
        "clients_ttfb_p50_ms": pct(many_ttfb, 0.5) * 1e3,
        "clients_ttfb_p99_ms": pct(many_ttfb, 0.99) * 1e3,
        "peak_rss_mib": peak / 1024,
        "rounds_mbps": [round(s / 1e6) for s in speeds],
    }
    print(f"   {name:9} {proto}: {row['mbps']:6.0f} MB/s (rounds {row['rounds_mbps']}), "
          f"TTFB {row['ttfb_ms']:.1f} ms, CPU {row['cpu_s_per_gib']:.2f} s/GiB; "
          f"{CLIENTS} clients {row['clients_mbps']:.0f} MB/s, TTFB p50 {row['clients_ttfb_p50_ms']:.0f} "
          f"p99 {row['clients_ttfb_p99_ms']:.0f} ms, peak RSS {row['peak_rss_mib']:.1f} MiB", flush=True)
    return row


def main():
    json_out = None
    if "--json" in sys.argv:
        json_out = str(Path(sys.argv[sys.argv.index("--json") + 1]).resolve())
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        return
    for tool in ["curl", "openssl", NGINX, REGISTRY]:
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is missing (apt-get install nginx docker-registry curl openssl)")
    if os.environ.get("MESHANICS_FACADE_BIN"):
        facade_bin = Path(os.environ["MESHANICS_FACADE_BIN"]).resolve()
        print(f"== meshanics-facade: {facade_bin}", flush=True)
    else:
        print("== building meshanics-facade (release)", flush=True)
        run("cargo", "build", "--release", "--quiet", "-p", "meshanics-facade", "--manifest-path", str(REPO / "Cargo.toml"))
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        facade_bin = target / "release" / "meshanics-facade"

    work = Path(tempfile.mkdtemp(prefix="bench-facade-"))
    children = []
    try:
        os.chdir(work)
        print(f"== PKI (openssl, EC P-256) and a {BLOB_MIB} MiB blob", flush=True)
        key = lambda out: run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                              "-out", out, stderr=subprocess.DEVNULL)
        key("ca.key")
        run("openssl", "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=bench CA", "-days", "2",
            "-out", "ca.crt", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", stderr=subprocess.DEVNULL)
        for name, ext in [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                          ("device", "extendedKeyUsage=clientAuth")]:
            key(f"{name}.key")
            Path(f"{name}.ext").write_text(ext + "\nbasicConstraints=CA:FALSE\n")
            csr = run("openssl", "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}",
                      capture_output=True).stdout
            run("openssl", "x509", "-req", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-out", f"{name}.crt", "-extfile", f"{name}.ext", input=csr, stderr=subprocess.DEVNULL)
        size = BLOB_MIB * 1024 * 1024
        blobs = work / "upstream/v2/bench/blob/blobs"
        blobs.mkdir(parents=True)
        import hashlib
        digest = hashlib.sha256()
        with open("blob.bin", "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 << 20))
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        hexd = digest.hexdigest()
        os.rename("blob.bin", blobs / f"sha256:{hexd}")

        up, ng, nd, fa, op, fh, oh, rg = (free_port() for _ in range(8))
        # As root, nginx's workers would run as nobody and could not read the private folder.
        user = "user root;" if os.geteuid() == 0 else ""
        mtls = (f"ssl_certificate {work}/server.crt; ssl_certificate_key {work}/server.key; "
                f"ssl_client_certificate {work}/ca.crt; ssl_verify_client on; ssl_protocols TLSv1.3;")
        Path("nginx.conf").write_text(f"""
{user}
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path {work}/tmp-body;
    proxy_temp_path {work}/tmp-proxy;
    fastcgi_temp_path {work}/tmp-fastcgi;
    uwsgi_temp_path {work}/tmp-uwsgi;
    scgi_temp_path {work}/tmp-scgi;
    server {{
        listen 127.0.0.1:{up};
        root {work}/upstream;
        location = /v2/ {{ default_type application/json; return 200 '{{}}'; }}
    }}
    server {{
        listen 127.0.0.1:{ng} ssl http2;
        {mtls}
        location / {{
            proxy_pass http://127.0.0.1:{up};
            proxy_http_version 1.1;
            proxy_max_temp_file_size 0;
        }}
    }}
    server {{
        listen 127.0.0.1:{nd} ssl http2;
        {mtls}
        root {work}/upstream;
    }}
}}
""")
        run(NGINX, "-e", f"{work}/nginx-error.log", "-p", str(work), "-c", f"{work}/nginx.conf")
        wait_port(up)
        nginx_master = int(Path("nginx.pid").read_text())
        nginx_pids = lambda: [int(p) for p in subprocess.run(["pgrep", "-P", str(nginx_master)],
                                                              capture_output=True, text=True).stdout.split()]

        facades = {}
        for name, port, operator, cache in [("miss", fa, op, "max_bytes = 0"), ("hit", fh, oh, "")]:
            Path(f"state-{name}").mkdir()
            Path(f"facade-{name}.toml").write_text(f"""
listen = "127.0.0.1:{port}"
operator_listen = "127.0.0.1:{operator}"
state_dir = "{work}/state-{name}"
[tls]
certificate = "{work}/server.crt"
private_key = "{work}/server.key"
device_ca = "{work}/ca.crt"
[limits]
max_connections = 256
[cache]
{cache}
[[upstreams]]
host = "127.0.0.1:{up}"
plain_http = true
""")
            facades[name] = subprocess.Popen([str(facade_bin), "--config", f"facade-{name}.toml"],
                                             env={**os.environ, "RUST_LOG": "warn"},
                                             stdout=open(f"facade-{name}.log", "w"), stderr=subprocess.STDOUT)
            children.append(facades[name])
        facade, facade_hit = facades["miss"], facades["hit"]

        Path("registry.yml").write_text(f"""
version: 0.1
log: {{ level: warn }}
storage: {{ filesystem: {{ rootdirectory: {work}/registry-cache }} }}
http:
  addr: 127.0.0.1:{rg}
  tls: {{ certificate: {work}/server.crt, key: {work}/server.key, clientcas: [{work}/ca.crt] }}
proxy: {{ remoteurl: "http://127.0.0.1:{up}" }}
""")
        registry = subprocess.Popen([REGISTRY, "serve", "registry.yml"], stdout=open("registry.log", "w"),
                                    stderr=subprocess.STDOUT)
        children.append(registry)
        wait_port(op)  # the operator port: probing the device port would log a refused handshake
        wait_port(oh)
        wait_port(rg)

        path = f"bench/blob/blobs/sha256:{hexd}"
        proxies = [
            ("facade", f"https://127.0.0.1:{fa}/v2/127.0.0.1_{up}/{path}", lambda: [facade.pid]),
            ("nginx", f"https://127.0.0.1:{ng}/v2/{path}", nginx_pids),
            ("facade-hit", f"https://127.0.0.1:{fh}/v2/127.0.0.1_{up}/{path}", lambda: [facade_hit.pid]),
            ("nginx-disk", f"https://127.0.0.1:{nd}/v2/{path}", nginx_pids),
            ("registry", f"https://127.0.0.1:{rg}/v2/{path}", lambda: [registry.pid]),
        ]
        print("== checking: the facade delivers bytes that hash to the digest", flush=True)
        got = subprocess.run(f"curl -s --cacert ca.crt --cert device.crt --key device.key '{proxies[0][1]}' | sha256sum",
                             shell=True, capture_output=True, text=True).stdout.split()[0]
        if got != hexd:
            answer = subprocess.run(["curl", "-s", "-i", "--max-filesize", "4096", "--cacert", "ca.crt", "--cert",
                                     "device.crt", "--key", "device.key", proxies[0][1]],
                                    capture_output=True).stdout[:600].decode(errors="replace")
            raise SystemExit(f"bench: the facade delivered other bytes; it answered:\n{answer}\n"
                             f"its log:\n{Path('facade-miss.log').read_text()[-2000:]}")
        print(f"== {BLOB_MIB} MiB: 1 client x {ROUNDS} rounds, then {CLIENTS} clients x {CONCURRENT_SECONDS} s x {ROUNDS} rounds",
              flush=True)
        rows = []
        for proto in ["h1", "h2"]:
            for name, url, pids in proxies:
                rows.append(measure(work, name, url, pids, proto, size))
        metrics = {}
        for name, operator in [("miss", op), ("hit", oh)]:
            with urllib.request.urlopen(f"http://127.0.0.1:{operator}/metrics") as r:
                metrics[name] = r.read().decode()
        failures = sum(float(l.split()[-1]) for text in metrics.values() for l in text.splitlines()
                       if l.startswith("facade_verification_failures_total"))
        hit_lines = [l for l in metrics["hit"].splitlines()
                     if l.startswith(("facade_cache_hits_total", "facade_cache_misses_total", "facade_cache_fills_total"))]
        miss_lines = [l for l in metrics["miss"].splitlines() if l.startswith("facade_cache_hits_total")]

        print()
        print(f"| server | protocol | 1 client MB/s | TTFB ms | CPU s/GiB | {CLIENTS} clients MB/s | TTFB p50 / p99 ms | peak RSS MiB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['proxy']} | {'HTTP/1.1' if r['protocol'] == 'h1' else 'HTTP/2'} | {r['mbps']:.0f} | {r['ttfb_ms']:.1f} "
                  f"| {r['cpu_s_per_gib']:.2f} | {r['clients_mbps']:.0f} | {r['clients_ttfb_p50_ms']:.0f} / "
                  f"{r['clients_ttfb_p99_ms']:.0f} | {r['peak_rss_mib']:.1f} |")
        print()
        for proto in ["h1", "h2"]:
            by = {r["proxy"]: r for r in rows if r["protocol"] == proto}
            f, n, g = by["facade"], by["nginx"], by["registry"]
            h, d = by["facade-hit"], by["nginx-disk"]
            print(f"{proto}: miss facade/nginx {f['mbps'] / n['mbps'] * 100:.1f} % (target >= 100 %), "
                  f"hit facade/nginx-disk {h['mbps'] / d['mbps'] * 100:.1f} % (target >= 100 %), "
                  f"hit facade/registry {h['mbps'] / g['mbps'] * 100:.1f} %, "
                  f"{CLIENTS} clients: miss facade/nginx {f['clients_mbps'] / n['clients_mbps'] * 100:.1f} %, "
                  f"hit facade/nginx-disk {h['clients_mbps'] / d['clients_mbps'] * 100:.1f} %, "
                  f"hit facade/registry {h['clients_mbps'] / g['clients_mbps'] * 100:.1f} %; "
                  f"facade peak RSS miss {f['peak_rss_mib']:.1f} / hit {h['peak_rss_mib']:.1f} MiB (target < 64 MiB)")
        print(f"verification failures counted by the facades: {failures:.0f}")
        print(f"cache-on facade: {', '.join(hit_lines) or 'no cache metrics'}")
        print(f"cache-off facade: {', '.join(miss_lines) or 'no cache metrics'}")
        if json_out:
            Path(json_out).write_text(json.dumps({"blob_mib": BLOB_MIB, "rounds": ROUNDS, "clients": CLIENTS,
                                                  "concurrent_seconds": CONCURRENT_SECONDS, "rows": rows}, indent=1))
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        pid_file = work / "nginx.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
