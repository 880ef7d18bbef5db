"""The gateway benchmark that scripts/bench-gateway runs: zt server's OpenID
Provider, an nginx app behind a zt proxy sidecar, and two HTTPS front doors
to it (nginx without any person check, zt gateway checking one on every
request), loaded by oha in interleaved rounds. The session cookie comes from a
real sign-in (the provider's password form, driven with requests); the bearer
token from the provider's token endpoint."""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import requests

sys.path.insert(0, str(Path(__file__).parent))
from bench_proxy import cpu_model, cpu_seconds, free_port, oha, wait_until  # noqa: E402

PASSWORD = "bench password 1234"


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--zt", required=True)
    a.add_argument("--seconds", type=int, default=10)
    a.add_argument("--connections", type=int, default=32)
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--rate", type=int, default=5000)
    args = a.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs = []

    def start(command, log, env=None):
        p = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=open(work / log, "w"), env=env)
        procs.append(p)
        return p

    zt = args.zt

    def run(*command, stdin=None):
        return subprocess.run([zt, *command], cwd=work, check=True, capture_output=True, text=True, input=stdin).stdout

    try:
        gateway_id = "spiffe://example.org/ns/edge/sa/gateway"
        app_id = "spiffe://example.org/ns/demo/sa/app"
        run("ca", "init", "--trust-domain", "example.org", "--dir", "ca")
        run("ca", "bundle", "--ca", "ca", "--out", "mesh.pem")
        run("ca", "issue", "--ca", "ca", "--spiffe-id", gateway_id, "--dns", "localhost", "--ip", "127.0.0.1", "--out", "gateway")
        run("ca", "issue", "--ca", "ca", "--spiffe-id", app_id, "--dns", "localhost", "--out", "app")
        app, sidecar, sidecar_admin, idp, http, agent_api, nginx_tls, gateway, gateway_admin = (free_port() for _ in range(9))
        issuer = f"https://localhost:{idp}"
        origin = f"https://localhost:{gateway}"

        server = start([zt, "server", "--trust-domain", "example.org", "--data-dir", "data", "--http", f"127.0.0.1:{http}",
                        "--agent-api", f"127.0.0.1:{agent_api}", "--idp", f"127.0.0.1:{idp}", "--idp-passwords",
                        "--idp-backchannel-ca", "mesh.pem"], "server.log")
        wait_until(lambda: requests.get(f"http://127.0.0.1:{http}/readyz", timeout=1).ok, "zt server")
        socket = ["--socket", str(work / "data" / "admin.sock")]
        run("user", "add", "bench", "--email", "bench@example.org", *socket)
        run("user", "password", "bench", *socket, stdin=PASSWORD + "\n")
        secret = re.search(r'"secret":\s*"([^"]+)"', run(
            "client", "add", "zt-gateway", "--secret", "--redirect-uri", f"{origin}/.zt/callback",
            "--grant", "authorization_code", "--grant", "refresh_token", "--grant", "token_exchange",
            "--backchannel-logout-uri", f"{origin}/.zt/backchannel-logout", "--output", "json", *socket)).group(1)
        (work / "gateway.secret").write_text(secret)
        service_secret = re.search(r'"secret":\s*"([^"]+)"', run(
            "client", "add", "bench-api", "--secret", "--grant", "client_credentials", "--output", "json", *socket)).group(1)
        (work / "provider.pem").write_text(run("bundle", "show", "--format", "pem", *socket))

        (work / "app.conf").write_text(f"""worker_processes 1; pid {work}/app.pid; error_log {work}/app-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ listen 127.0.0.1:{app}; location / {{ return 200 "hello\\n"; }} }} }}
""")
        (work / "nginx.conf").write_text(f"""worker_processes auto; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream sidecar {{ server 127.0.0.1:{sidecar}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_tls} ssl;
    ssl_certificate {work}/gateway.crt; ssl_certificate_key {work}/gateway.key; ssl_protocols TLSv1.3;
    location / {{
      proxy_pass https://sidecar; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate {work}/gateway.crt; proxy_ssl_certificate_key {work}/gateway.key;
      proxy_ssl_trusted_certificate {work}/mesh.pem; proxy_ssl_verify on; proxy_ssl_name localhost;
      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;
    }}
  }}
}}
""")
        (work / "policies").mkdir()
        (work / "policies" / "edge.yaml").write_text(f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: people, namespace: edge}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["{issuer}/*"]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/*"]}}}}]
""")
        (work / "gateway.yaml").write_text(f"""listen: 127.0.0.1:{gateway}
url: {origin}
admin: 127.0.0.1:{gateway_admin}
tls: {{cert: gateway.crt, key: gateway.key}}
oidc: {{issuer: "{issuer}", client_id: zt-gateway, client_secret_file: gateway.secret, ca: provider.pem,
        audiences: [zt-gateway]}}
session: {{key_file: cookie.key}}
identity: {{cert: gateway.crt, key: gateway.key, bundle: mesh.pem}}
policy: {{dir: policies, namespace: edge}}
headers: {{X-Zt-User: preferred_username, X-Zt-Groups: groups}}
routes:
  - {{path: /, upstream: "127.0.0.1:{sidecar}", spiffe_id: "{app_id}", token: none}}
""")
        quiet = dict(os.environ, RUST_LOG="info,zt::access=off")
        start(["nginx", "-c", str(work / "app.conf"), "-g", "daemon off;"], "app.log")
        start([zt, "proxy", "--inbound", f"127.0.0.1:{sidecar}", "--admin", f"127.0.0.1:{sidecar_admin}", "--app", f"127.0.0.1:{app}",
               "--allow-spiffe-id", gateway_id, "--cert", "app.crt", "--key", "app.key", "--bundle", "mesh.pem"], "sidecar.log", quiet)
        nginx = start(["nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"], "nginx.log")
        gw = start([zt, "gateway", "--config", str(work / "gateway.yaml")], "gateway.log", quiet)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{sidecar_admin}/readyz", timeout=1).ok, "the sidecar")
        wait_until(lambda: requests.get(f"http://127.0.0.1:{gateway_admin}/healthz", timeout=1).ok, "zt gateway")
        ca = str(work / "mesh.pem")
        roots = work / "roots.pem"
        roots.write_text((work / "provider.pem").read_text() + (work / "mesh.pem").read_text())
        wait_until(lambda: requests.get(f"https://localhost:{nginx_tls}/", verify=ca, timeout=1).ok, "nginx")

        cookie = sign_in(origin, issuer, str(roots))
        token = requests.post(f"{issuer}/token", auth=("bench-api", service_secret), verify=str(roots), timeout=10,
                              data={"grant_type": "client_credentials", "audience": "zt-gateway"}).json()["access_token"]
        for name, header in (("cookie", f"Cookie: {cookie}"), ("bearer", f"Authorization: Bearer {token}")):
            r = requests.get(f"{origin}/", headers=dict([header.split(": ", 1)]), verify=ca, timeout=10)
            if r.status_code != 200:
                sys.exit(f"bench-gateway: the gateway refused the {name}: {r.status_code} {r.text}")

        tls = ["--cacert", ca]
        targets = [
            ("nginx TLS → sidecar (no person)", f"https://localhost:{nginx_tls}/", tls, nginx),
            ("zt gateway, session cookie", f"{origin}/", tls + ["-H", f"Cookie: {cookie}"], gw),
            ("zt gateway, bearer token", f"{origin}/", tls + ["-H", f"Authorization: Bearer {token}"], gw),
        ]
        print(f"machine: {os.cpu_count()} cores, {cpu_model()}; oha {args.connections} connections, "
              f"{args.seconds}s per run after a 2 s warm-up, {args.rounds} interleaved rounds; "
              "every front door goes on over mTLS to the same zt proxy sidecar in front of the same nginx app")
        results = {name: [] for name, *_ in targets}
        for round_ in range(1, args.rounds + 1):
            for name, url, extra, _ in targets:
                oha(url, extra, 2, args.connections)
                r = oha(url, extra, args.seconds, args.connections)
                results[name].append(r)
                print(f"round {round_}  {name:<34} {r['rps']:>9.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  "
                      f"non-200 {r['total'] - r['ok']}  errors {r['errors']}")
        print()
        med = {}
        for name, *_ in targets:
            med[name] = {k: statistics.median(r[k] for r in results[name]) for k in ("rps", "p50", "p99")}
            m = med[name]
            print(f"{name:<34} {m['rps']:>9.0f} req/s  p50 {m['p50']:.3f} ms  p99 {m['p99']:.3f} ms")
        base = targets[0][0]
        for name, *_ in targets[1:]:
            print(f"{name} / nginx: throughput {med[name]['rps'] / med[base]['rps']:.2f}x")
        print()
        print(f"At a fixed {args.rate} req/s ({args.seconds}s, {args.rounds} interleaved rounds): CPU time of each front door's "
              "processes and threads per request, and p99 (medians):")
        cpu = {name: [] for name, *_ in targets}
        p99 = {name: [] for name, *_ in targets}
        for round_ in range(1, args.rounds + 1):
            for name, url, extra, proc in targets:
                oha(url, extra, 2, args.connections, args.rate)
                before = cpu_seconds(proc.pid)
                r = oha(url, extra, args.seconds, args.connections, args.rate)
                used = cpu_seconds(proc.pid) - before
                cpu[name].append(used / max(r["ok"], 1) * 1e6)
                p99[name].append(r["p99"])
                print(f"round {round_}  {name:<34} {cpu[name][-1]:>7.1f} µs per request  p99 {r['p99']:.3f} ms  "
                      f"({r['ok']} requests, non-200 {r['total'] - r['ok']})")
        cpu = {name: statistics.median(v) for name, v in cpu.items()}
        p99 = {name: statistics.median(v) for name, v in p99.items()}
        for name, *_ in targets:
            print(f"{name:<34} {cpu[name]:>7.1f} µs per request  p99 {p99[name]:.3f} ms")
        for name, *_ in targets[1:]:
            print(f"{name}: {cpu[name] - cpu[base]:+.1f} µs CPU and {p99[name] - p99[base]:+.3f} ms p99 per request against nginx, "
                  f"which checks no one")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def sign_in(origin, issuer, roots):
    """A person signing in through the gateway with the provider's password
    form, as a browser would, cookies by hand: the gateway's session cookie."""
    hidden = lambda html, name: re.search(r'name="%s" value="([^"]*)"' % name, html).group(1)
    first = requests.get(f"{origin}/", headers={"Accept": "text/html"}, verify=roots, allow_redirects=False, timeout=10)
    binding = first.headers["set-cookie"].split(";")[0]
    page = requests.get(first.headers["location"], verify=roots, allow_redirects=False, timeout=10)
    posted = requests.post(f"{issuer}/signin/password", verify=roots, allow_redirects=False, timeout=10,
                           headers={"Cookie": page.headers["set-cookie"].split(";")[0], "Origin": issuer},
                           data={"request": hidden(page.text, "request"), "csrf": hidden(page.text, "csrf"),
                                 "username": "bench", "password": PASSWORD})
    callback = posted.headers["location"]
    if urlparse(callback).netloc != urlparse(origin).netloc:
        sys.exit(f"bench-gateway: the sign-in went to {callback}")
    landed = requests.get(callback, headers={"Cookie": binding}, verify=roots, allow_redirects=False, timeout=10)
    for value in landed.raw.headers.getlist("Set-Cookie"):
        if value.startswith("__Host-zt-session="):
            return value.split(";")[0]
    sys.exit(f"bench-gateway: no session cookie: {landed.status_code} {landed.text}")


if __name__ == "__main__":
    main()
