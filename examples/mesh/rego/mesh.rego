# zt up's service-to-service policies (examples/mesh/policies/public.yaml and
# internal.yaml; not the gateway's) in Rego: /public for every mesh identity,
# GET /internal for service-one only, nothing else. Serve it with
#   zt pdp run examples/mesh/rego/mesh.rego
# and ask with the seed's input, {"principal", "method", "path"}:
#   curl -s localhost:8181/v1/data/mesh/authz/allow -d '{"input":{"principal":"spiffe://cluster.local/ns/default/sa/service-one","method":"GET","path":"/internal"}}'
package mesh.authz

default allow := false

mesh_identity if startswith(input.principal, "spiffe://cluster.local/")

allow if {
	mesh_identity
	input.path == "/public"
}

allow if {
	input.principal == "spiffe://cluster.local/ns/default/sa/service-one"
	input.method == "GET"
	input.path == "/internal"
}
