# Tests of the seed's policy, as `opa test` runs them: zt policy test examples/rego
package authz

test_payment_service_may_create_a_charge {
    allow with input as {"principal": "spiffe://cluster.local/ns/production/sa/payment-service", "method": "POST", "path": "/api/v1/charges"}
}

test_payment_service_may_not_read_charges {
    not allow with input as {"principal": "spiffe://cluster.local/ns/production/sa/payment-service", "method": "GET", "path": "/api/v1/charges"}
}

test_other_services_may_not_create_charges {
    not allow with input as {"principal": "spiffe://cluster.local/ns/production/sa/orders", "method": "POST", "path": "/api/v1/charges"}
}
