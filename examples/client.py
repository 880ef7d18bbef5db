#!/usr/bin/env python3
"""The seed's client: Python `requests` calling a zt-protected service with an
X.509-SVID from zt, verifying the service against zt's trust bundle.

Certificates: `zt up` writes one set per demo service to DIR/clients/SERVICE/;
`zt x509 mint --spiffe-id ID --dns localhost --write DIR` writes a set anywhere.
Each set is svid.pem (the certificate chain), key.pem and bundle.pem.

    python3 examples/client.py zt-up/clients/service-one https://localhost:7002/internal
    200 {"caller":"spiffe://cluster.local/ns/default/sa/service-one", ...}

Prints the status and the body; exits 0 on a 2xx answer, 1 otherwise.
"""

import argparse
import os
import sys

import requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("certs", help="directory with svid.pem, key.pem and bundle.pem")
    parser.add_argument("url", help="e.g. https://localhost:7002/internal")
    parser.add_argument("--method", default="GET")
    parser.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="repeatable"
    )
    args = parser.parse_args()

    headers = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            parser.error(f"--header {header!r}: expected 'NAME: VALUE'")
        headers[name.strip()] = value.strip()

    response = requests.request(
        args.method,
        args.url,
        cert=(os.path.join(args.certs, "svid.pem"), os.path.join(args.certs, "key.pem")),
        verify=os.path.join(args.certs, "bundle.pem"),
        headers=headers,
        timeout=10,
    )
    print(response.status_code, response.text.strip())
    return 0 if response.ok else 1


if __name__ == "__main__":
    sys.exit(main())
