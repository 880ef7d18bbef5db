"""A workload using py-spiffe (the Python `spiffe` package) against the Workload
API named by SPIFFE_ENDPOINT_SOCKET. Prints what it got as one JSON document;
the Rust test checks it. Usage: workload_api.py AUDIENCE"""

import json
import sys

from cryptography.hazmat.primitives import serialization
from spiffe import JwtSvid, WorkloadApiClient


def main() -> None:
    audience = sys.argv[1]
    with WorkloadApiClient() as client:  # SPIFFE_ENDPOINT_SOCKET
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
        bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        jwt = client.fetch_jwt_svid(audience={audience})
        validated = client.validate_jwt_svid(jwt.token, audience)
        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        # Verified here too, with the JWT bundle the agent served, by py-spiffe itself.
        local = JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {audience})
        wrong_audience = None
        try:
            client.validate_jwt_svid(jwt.token, audience + "-other")
        except Exception as e:  # the agent must refuse it
            wrong_audience = type(e).__name__ + ": " + str(e)
        leaf = svid.leaf
        print(json.dumps({
            "spiffe_id": str(svid.spiffe_id),
            "chain_pem": "".join(
                c.public_bytes(serialization.Encoding.PEM).decode() for c in svid.cert_chain
            ),
            "key_matches_leaf": svid.private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) == leaf.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "bundle_trust_domain": str(bundle.trust_domain) if bundle else None,
            "bundle_pem": "".join(
                c.public_bytes(serialization.Encoding.PEM).decode() for c in bundle.x509_authorities
            ) if bundle else "",
            "jwt_spiffe_id": str(jwt.spiffe_id),
            "jwt_token": jwt.token,
            "jwt_audience": sorted(jwt.audience),
            "validated_spiffe_id": str(validated.spiffe_id),
            "local_spiffe_id": str(local.spiffe_id),
            "jwt_bundle_keys": len(jwt_bundle.jwt_authorities) if jwt_bundle else 0,
            "wrong_audience_error": wrong_audience,
        }))


if __name__ == "__main__":
    main()
