"""PyJWT verifies an access token of zt's OpenID Provider against its JWKS, as
a resource server would (RFC 9068): header typ "at+jwt", an algorithm the JWKS
names, the audience, the issuer, exp and iat required.

    python tests/interop/pyjwt_verify.py '{"issuer", "ca", "token", "audience"}'

PyJWKClient fetches with urllib and no CA option, so the JWKS is fetched here
with requests (verify=CA) and each key loaded with jwt.PyJWK. Prints
{"claims": {...}, "alg": ...} or exits 1 with PyJWT's refusal.
"""

import json
import sys

import jwt
import requests

args = json.loads(sys.argv[1])
meta = requests.get(args["issuer"] + "/.well-known/openid-configuration", verify=args["ca"], timeout=20).json()
jwks = requests.get(meta["jwks_uri"], verify=args["ca"], timeout=20).json()
keys = {key["kid"]: jwt.PyJWK(key) for key in jwks["keys"]}

header = jwt.get_unverified_header(args["token"])
if header.get("typ") != "at+jwt":
    raise SystemExit("typ is %r, not at+jwt" % header.get("typ"))
key = keys.get(header.get("kid"))
if key is None:
    raise SystemExit("kid %r is not in the JWKS" % header.get("kid"))
algorithms = sorted({k["alg"] for k in jwks["keys"] if "alg" in k})
claims = jwt.decode(
    args["token"],
    key=key,
    algorithms=algorithms,
    audience=args["audience"],
    issuer=meta["issuer"],
    options={"require": ["exp", "iat", "iss", "aud", "sub"]},
)
print(json.dumps({"claims": claims, "alg": header["alg"], "algorithms": algorithms}))
