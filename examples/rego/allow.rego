# The seed's OPA policy, in Rego v0 as the seed wrote it: only payment-service may
# create charges and refunds on billing-service. `zt pdp run examples/rego/allow.rego`
# serves it where the seed ran `opa run --server policy/allow.rego`.
package authz

import input

default allow = false

allow {
    input.principal == "spiffe://cluster.local/ns/production/sa/payment-service"
    input.method == "POST"
    allowed_paths[input.path]
}

allowed_paths = {"/api/v1/charges", "/api/v1/refunds"}
