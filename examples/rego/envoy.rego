# An Envoy ext_authz policy with OPA-Envoy's input shape, for
# `zt pdp run --ext-authz-addr 127.0.0.1:9191 examples/rego/envoy.rego`:
# anyone may GET /public/…; payment-service may POST /api/v1/charges; a denial
# says why in its body.
package envoy.authz

default allow := {"allowed": false, "http_status": 403, "body": "denied by zt: not allowed"}

allow := {"allowed": true} if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}

allow := {"allowed": true} if {
	input.attributes.source.principal == "spiffe://cluster.local/ns/production/sa/payment-service"
	input.attributes.request.http.method == "POST"
	input.parsed_path == ["api", "v1", "charges"]
}
