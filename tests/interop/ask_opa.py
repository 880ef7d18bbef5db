"""The seed tutorial's way of asking OPA for a decision, unchanged: Python
`requests` against OPA's REST API. The tests point it at `zt pdp run`.
Usage: ask_opa.py URL PRINCIPAL METHOD PATH — prints the decision as JSON."""

import json
import sys

import requests

OPA_URL = sys.argv[1]


def ask_opa(principal, method, path):
    response = requests.post(
        f"{OPA_URL}/v1/data/authz/allow",
        json={"input": {"principal": principal, "method": method, "path": path}},
        timeout=5,
    )
    response.raise_for_status()
    return response.json().get("result", False)


print(json.dumps({"allow": ask_opa(*sys.argv[2:5])}))
