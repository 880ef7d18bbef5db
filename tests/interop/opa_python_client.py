"""The PyPI `opa-python-client` package (OpaClient) against `zt pdp run`, as an
application written for OPA would use it. Usage: opa_python_client.py PORT — prints
what each call returned, as JSON."""

import json
import sys

from opa_client.opa import OpaClient

client = OpaClient(host="127.0.0.1", port=int(sys.argv[1]))
payment = {
    "principal": "spiffe://cluster.local/ns/production/sa/payment-service",
    "method": "POST",
    "path": "/api/v1/charges",
}
orders = dict(payment, principal="spiffe://cluster.local/ns/production/sa/orders")
out = {
    "connected": client.check_connection(),
    "policies": client.get_policies_list(),
    "allowed": client.query_rule(input_data=payment, package_path="authz", rule_name="allow"),
    "denied": client.query_rule(input_data=orders, package_path="authz", rule_name="allow"),
    "updated": client.update_policy_from_string("package extra\n\nanswer := 42\n", "extra"),
    "extra": client.query_rule(input_data={}, package_path="extra", rule_name="answer"),
    "info": client.get_policies_info(),
    "deleted": client.delete_policy("extra"),
}
print(json.dumps(out))
