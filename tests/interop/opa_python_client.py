"""The PyPI `opa-python-client` package (OpaClient) against `zt pdp run`, as an
application written for OPA would use it. Usage: opa_python_client.py PORT [TOKEN] —
prints what each call returned, as JSON. With TOKEN, the client sends it as OPA's
`--authentication=token` expects, and a client without it must be refused."""

import json
import sys

from opa_client.errors import ConnectionsError
from opa_client.opa import OpaClient

token = sys.argv[2] if len(sys.argv) > 2 else None
client = OpaClient(host="127.0.0.1", port=int(sys.argv[1]), token=token)


def without_token():
    try:
        OpaClient(host="127.0.0.1", port=int(sys.argv[1])).check_connection()
        return "answered"
    except ConnectionsError:
        return "refused"


payment = {
    "principal": "spiffe://cluster.local/ns/production/sa/payment-service",
    "method": "POST",
    "path": "/api/v1/charges",
}
orders = dict(payment, principal="spiffe://cluster.local/ns/production/sa/orders")
out = {
    "connected": client.check_connection(),
    "without_token": without_token() if token else None,
    "policies": client.get_policies_list(),
    "allowed": client.query_rule(input_data=payment, package_path="authz", rule_name="allow"),
    "denied": client.query_rule(input_data=orders, package_path="authz", rule_name="allow"),
    "updated": client.update_policy_from_string("package extra\n\nanswer := 42\n", "extra"),
    "extra": client.query_rule(input_data={}, package_path="extra", rule_name="answer"),
    "info": client.get_policies_info(),
    "deleted": client.delete_policy("extra"),
}
print(json.dumps(out))
