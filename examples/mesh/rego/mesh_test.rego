# Tests of mesh.rego, as `opa test` runs them: zt policy test examples/mesh/rego
package mesh.authz

service_one := "spiffe://cluster.local/ns/default/sa/service-one"

service_two := "spiffe://cluster.local/ns/default/sa/service-two"

test_public_is_open_to_every_mesh_identity if {
	allow with input as {"principal": service_two, "method": "GET", "path": "/public"}
}

test_public_is_closed_to_other_trust_domains if {
	not allow with input as {"principal": "spiffe://example.org/ns/default/sa/service-two", "method": "GET", "path": "/public"}
}

test_service_one_may_get_internal if {
	allow with input as {"principal": service_one, "method": "GET", "path": "/internal"}
}

test_service_two_may_not_get_internal if {
	not allow with input as {"principal": service_two, "method": "GET", "path": "/internal"}
}

test_service_one_may_not_post_internal if {
	not allow with input as {"principal": service_one, "method": "POST", "path": "/internal"}
}

test_nothing_else if {
	not allow with input as {"principal": service_one, "method": "GET", "path": "/admin"}
}

test_no_principal_no_access if {
	not allow with input as {"method": "GET", "path": "/public"}
}
