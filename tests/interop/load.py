"""Load through an mTLS server for SECONDS: one keep-alive connection (Python
`requests` session) and, alternately, a new TLS connection per request (Python
`ssl`), recording the server certificate's serial of every new handshake. Prints
"running" after the first ten answers, then
{"ok": N, "failed": N, "errors": [...], "serials": [...]}.
Usage: load.py HOST PORT CERT KEY CA SECONDS"""

import json
import socket
import ssl
import sys
import time

import requests
from cryptography import x509

host, port, cert, key, ca, seconds = sys.argv[1:]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
session = requests.Session()
ok, failed, errors, serials = 0, 0, [], []
deadline = time.monotonic() + float(seconds)
i = 0
while time.monotonic() < deadline:
    i += 1
    try:
        if i % 2:
            status = session.get(f"https://{host}:{port}/kept", cert=(cert, key), verify=ca, timeout=10).status_code
        else:
            with socket.create_connection((host, int(port)), timeout=10) as tcp:
                with context.wrap_socket(tcp, server_hostname=host) as tls:
                    serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
                    if not serials or serials[-1] != serial:
                        serials.append(serial)
                    tls.sendall(f"GET /new HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    answer = b""
                    while chunk := tls.recv(65536):
                        answer += chunk
                    status = int(answer.split(b" ", 2)[1])
        if status == 200:
            ok += 1
            if ok == 10:
                print("running", flush=True)
        else:
            failed += 1
            errors.append(f"status {status}")
    except Exception as e:  # any failure counts
        failed += 1
        errors.append(f"{type(e).__name__}: {e}")
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:5], "serials": [format(s, "x") for s in serials]}))
