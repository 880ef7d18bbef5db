"""The seed tutorial's client: Python `requests` with a client certificate from
`zt ca issue` and the bundle as CA. Prints the status and body as JSON, or the
error. Extra headers (to try to forge an identity) come as NAME=VALUE arguments.
Usage: requests_client.py URL CERT KEY CA [NAME=VALUE ...]"""

import json
import sys

import requests

url, cert, key, ca, *extra = sys.argv[1:]
headers = dict(h.split("=", 1) for h in extra)
try:
    response = requests.get(url, cert=(cert, key), verify=ca, headers=headers, timeout=10)
    print(json.dumps({"status": response.status_code, "body": response.text}))
except requests.exceptions.RequestException as e:
    print(json.dumps({"error": type(e).__name__, "detail": str(e)}))
