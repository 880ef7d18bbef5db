"""The side-by-side data-plane benchmark that scripts/bench-proxy runs: an nginx
app, and nginx, Envoy and zt proxy terminating mTLS in front of it, loaded by oha
in interleaved rounds. Each proxy is its own process tree, so its CPU time is
read from /proc apart from the app's and the load generator's."""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid):
    """pid and every descendant (nginx's workers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo.extend(int(c) for c in children)
    return pids


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def rss_kb(pid):
    total = 0
    for p in tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def wait_until(check, what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"bench-proxy: {what} did not come up")


def oha(url, args, seconds, connections, rate=None):
    command = ["oha", "-z", f"{seconds}s", "-c", str(connections), "--no-tui", "--output-format", "json"]
    if rate:
        command += ["-q", str(rate)]
    out = subprocess.run(command + args + [url], check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    s, p = r["summary"], r["latencyPercentiles"]
    total = sum(r.get("statusCodeDistribution", {}).values())
    return {
        "rps": s["requestsPerSec"],
        "p50": p["p50"] * 1e3,
        "p99": p["p99"] * 1e3,
        "ok": r.get("statusCodeDistribution", {}).get("200", 0),
        "total": total,
        "errors": sum(r.get("errorDistribution", {}).values()),
    }


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--zt", required=True)
    a.add_argument("--envoy", required=True)
    a.add_argument("--seconds", type=int, default=10)
    a.add_argument("--connections", type=int, default=32)
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--rate", type=int, default=5000)
    args = a.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    procs = []

    def start(command, log, env=None):
        p = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=open(work / log, "w"), env=env)
        procs.append(p)
        return p

    try:
        zt = args.zt
        run = lambda *c: subprocess.run([zt, *c], cwd=work, check=True, capture_output=True)
        run("ca", "init", "--trust-domain", "example.org", "--dir", "ca")
        run("ca", "issue", "--ca", "ca", "--spiffe-id", "spiffe://example.org/app", "--dns", "localhost", "--ip", "127.0.0.1", "--out", "server")
        run("ca", "issue", "--ca", "ca", "--spiffe-id", "spiffe://example.org/client", "--out", "client")
        run("ca", "bundle", "--ca", "ca", "--out", "bundle.pem")
        app, nginx_tls, envoy_tls, envoy_admin, zt_tls, zt_admin = (free_port() for _ in range(6))

        (work / "app.conf").write_text(f"""worker_processes auto; pid {work}/app.pid; error_log {work}/app-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ listen 127.0.0.1:{app}; location / {{ return 200 "hello\\n"; }} }} }}
""")
        (work / "nginx.conf").write_text(f"""worker_processes auto; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream app {{ server 127.0.0.1:{app}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_tls} ssl;
    ssl_certificate {work}/server.crt; ssl_certificate_key {work}/server.key;
    ssl_client_certificate {work}/bundle.pem; ssl_verify_client on; ssl_protocols TLSv1.3;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        (work / "envoy.yaml").write_text(f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {envoy_admin}}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {envoy_tls}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            tls_certificates: [{{certificate_chain: {{filename: {work}/server.crt}}, private_key: {{filename: {work}/server.key}}}}]
            validation_context: {{trusted_ca: {{filename: {work}/bundle.pem}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config: {{virtual_hosts: [{{name: app, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: app
    type: STATIC
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]}}
""")
        start(["nginx", "-c", str(work / "app.conf"), "-g", "daemon off;"], "app.log")
        nginx = start(["nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"], "nginx.log")
        envoy = start([args.envoy, "-c", str(work / "envoy.yaml"), "--concurrency", str(os.cpu_count()), "--use-dynamic-base-id", "-l", "warn"], "envoy.log")
        env = dict(os.environ)
        if os.environ.get("ZT_BENCH_ACCESS_LOG") != "on":
            env["RUST_LOG"] = "info,zt::access=off"
        ztp = start([zt, "proxy", "--inbound", f"127.0.0.1:{zt_tls}", "--admin", f"127.0.0.1:{zt_admin}", "--app", f"127.0.0.1:{app}",
                     "--allow-spiffe-id", "spiffe://example.org/*", "--cert", "server.crt", "--key", "server.key", "--bundle", "bundle.pem"], "zt-proxy.log", env)
        get = lambda url: urllib.request.urlopen(url, timeout=1).status == 200
        wait_until(lambda: get(f"http://127.0.0.1:{app}/"), "the nginx app")
        wait_until(lambda: get(f"http://127.0.0.1:{zt_admin}/readyz"), "zt proxy")
        wait_until(lambda: get(f"http://127.0.0.1:{envoy_admin}/ready"), "Envoy")
        wait_until(lambda: socket.create_connection(("127.0.0.1", nginx_tls)).close() is None, "nginx mTLS")
        zt_idle = rss_kb(ztp.pid)

        tls = ["--cacert", str(work / "bundle.pem"), "--cert", str(work / "client.crt"), "--key", str(work / "client.key")]
        targets = [
            ("app direct (plaintext)", f"http://127.0.0.1:{app}/", [], None),
            ("nginx mTLS", f"https://localhost:{nginx_tls}/", tls, nginx),
            ("Envoy mTLS", f"https://localhost:{envoy_tls}/", tls, envoy),
            ("zt proxy mTLS", f"https://localhost:{zt_tls}/", tls, ztp),
        ]
        print(f"machine: {os.cpu_count()} cores, {cpu_model()}; oha {args.connections} connections, "
              f"{args.seconds}s per run after a 2 s warm-up, {args.rounds} interleaved rounds")
        print(f"zt proxy access log: {'on' if os.environ.get('ZT_BENCH_ACCESS_LOG') == 'on' else 'off (as nginx and Envoy here)'}")
        results = {name: [] for name, *_ in targets}
        for round_ in range(1, args.rounds + 1):
            for name, url, extra, _ in targets:
                oha(url, extra, 2, args.connections)
                r = oha(url, extra, args.seconds, args.connections)
                results[name].append(r)
                print(f"round {round_}  {name:<24} {r['rps']:>9.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  non-200 {r['total'] - r['ok']}  errors {r['errors']}")
        print()
        print(f"{'median of rounds':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        med = {}
        for name, *_ in targets:
            rs = results[name]
            med[name] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
            m = med[name]
            print(f"{name:<24} {m['rps']:>9.0f} {m['p50']:>8.3f} {m['p99']:>8.3f}")
        z = med["zt proxy mTLS"]
        for peer in ("nginx mTLS", "Envoy mTLS"):
            ratios = [a["rps"] / b["rps"] for a, b in zip(results["zt proxy mTLS"], results[peer])]
            print(f"zt proxy / {peer}: throughput {z['rps'] / med[peer]['rps']:.2f}x (per round {', '.join(f'{x:.2f}' for x in ratios)}), "
                  f"p99 {z['p99']:.3f} vs {med[peer]['p99']:.3f} ms")
        print()
        print(f"CPU time per 100 000 requests at {args.rate} req/s ({args.seconds}s, {args.connections} connections), each proxy's processes and threads:")
        cpu = {}
        for name, url, extra, proc in targets[1:]:
            oha(url, extra, 2, args.connections, args.rate)
            before = cpu_seconds(proc.pid)
            r = oha(url, extra, args.seconds, args.connections, args.rate)
            used = cpu_seconds(proc.pid) - before
            cpu[name] = used / max(r["ok"], 1) * 100_000
            print(f"{name:<24} {cpu[name]:>8.2f} s per 100k  ({r['ok']} requests, {used:.2f} s CPU, p99 {r['p99']:.3f} ms)")
        for peer in ("nginx mTLS", "Envoy mTLS"):
            print(f"zt proxy CPU / {peer}: {cpu['zt proxy mTLS'] / cpu[peer]:.2f}x")
        print()
        print(f"resident memory: zt proxy {zt_idle / 1024:.1f} MB idle, {rss_kb(ztp.pid) / 1024:.1f} MB after the load; "
              f"nginx {rss_kb(nginx.pid) / 1024:.1f} MB, Envoy {rss_kb(envoy.pid) / 1024:.1f} MB after the load")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
