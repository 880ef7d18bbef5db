"""Authlib's OAuth2Session (requests) against zt's OpenID Provider: the code
flow with PKCE S256, a person signing in with a password on the provider's
page, refresh with rotation and reuse detection, introspection, revocation.

    python tests/interop/authlib_client.py '{"issuer", "client_id",
        "client_secret", "ca", "redirect_uri", "username", "password"}'

TLS trusts exactly the CA file (verify=CA). Prints one JSON object, the summary
crates/zt/tests/idp.rs asserts on.
"""

import json
import re
import sys
from urllib.parse import urlparse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError

args = json.loads(sys.argv[1])
ca = args["ca"]
meta = requests.get(args["issuer"] + "/.well-known/openid-configuration", verify=ca, timeout=20).json()
origin = "{0.scheme}://{0.netloc}".format(urlparse(args["issuer"]))


def session():
    s = OAuth2Session(
        args["client_id"],
        args["client_secret"],
        scope="openid profile offline_access",
        redirect_uri=args["redirect_uri"],
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )
    # requests lets REQUESTS_CA_BUNDLE override a session's verify, so each
    # call below passes verify=ca too.
    s.verify = ca
    return s


def hidden(html, name):
    found = re.search(r'name="%s" value="([^"]*)"' % name, html)
    if not found:
        raise SystemExit("no hidden %s field: %s" % (name, html[:400]))
    return found.group(1)


def sign_in(url):
    """What a browser does: the sign-in page, then its password form, cookies by hand."""
    page = requests.get(url, verify=ca, allow_redirects=False, timeout=20)
    assert page.status_code == 200, (page.status_code, page.text)
    cookie = page.headers["set-cookie"].split(";")[0]
    form = {
        "request": hidden(page.text, "request"),
        "csrf": hidden(page.text, "csrf"),
        "username": args["username"],
        "password": args["password"],
    }
    posted = requests.post(
        origin + "/signin/password",
        data=form,
        headers={"Cookie": cookie, "Origin": origin},
        verify=ca,
        allow_redirects=False,
        timeout=20,
    )
    assert posted.status_code == 303, (posted.status_code, posted.text)
    return posted.headers["location"]


def refusal(call):
    try:
        call()
        return "none"
    except OAuthError as e:
        return e.error


summary = {}
client = session()
verifier = generate_token(48)
nonce = generate_token(20)
url, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
callback = sign_in(url)
summary["iss_in_callback"] = "iss=" in callback
tokens = client.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier, verify=ca)
summary["token_type"] = tokens["token_type"]
summary["has_id_token"] = "id_token" in tokens

first_refresh = tokens["refresh_token"]
refreshed = client.refresh_token(meta["token_endpoint"], refresh_token=first_refresh, verify=ca)
summary["rotated"] = refreshed["refresh_token"] != first_refresh

introspected = client.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"], verify=ca).json()
summary["introspection_active"] = introspected["active"]
summary["introspection_client_id"] = introspected.get("client_id")

# A second presentation of the spent token, then one by the legitimate holder.
summary["reuse"] = refusal(lambda: session().refresh_token(meta["token_endpoint"], refresh_token=first_refresh, verify=ca))
current = refreshed["refresh_token"]
summary["after_reuse"] = refusal(lambda: session().refresh_token(meta["token_endpoint"], refresh_token=current, verify=ca))

revoked = client.revoke_token(meta["revocation_endpoint"], token=refreshed["access_token"], verify=ca)
summary["revocation_status"] = revoked.status_code
after = client.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"], verify=ca).json()
summary["introspection_after_revocation"] = after["active"]

print(json.dumps(summary))
