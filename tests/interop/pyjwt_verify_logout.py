"""PyJWT validates a logout token of zt's OpenID Provider as a relying party
must (OpenID Connect Back-Channel Logout 1.0 §2.6): header typ "logout+jwt",
a signature by a key of the provider's JWKS with an algorithm it names, iss,
aud, iat and exp, a jti, the back-channel logout event, sid or sub, and no
nonce.

    python tests/interop/pyjwt_verify_logout.py '{"issuer", "ca", "token", "audience"}'

Prints {"claims": {...}, "header": {...}} or exits 1 with the refusal.
"""

import json
import sys

import jwt
import requests

EVENT = "http://schemas.openid.net/event/backchannel-logout"

args = json.loads(sys.argv[1])
meta = requests.get(args["issuer"] + "/.well-known/openid-configuration", verify=args["ca"], timeout=20).json()
if meta.get("backchannel_logout_supported") is not True:
    raise SystemExit("discovery does not say backchannel_logout_supported")
jwks = requests.get(meta["jwks_uri"], verify=args["ca"], timeout=20).json()
keys = {key["kid"]: jwt.PyJWK(key) for key in jwks["keys"]}

header = jwt.get_unverified_header(args["token"])
if header.get("typ") != "logout+jwt":
    raise SystemExit("typ is %r, not logout+jwt" % header.get("typ"))
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
    options={"require": ["exp", "iat", "iss", "aud", "jti"]},
)
events = claims.get("events")
if not isinstance(events, dict) or events.get(EVENT) != {}:
    raise SystemExit("events %r lacks %s" % (events, EVENT))
if "sid" not in claims and "sub" not in claims:
    raise SystemExit("neither sid nor sub")
if "nonce" in claims:
    raise SystemExit("a logout token must not hold a nonce")
print(json.dumps({"claims": claims, "header": header}))
