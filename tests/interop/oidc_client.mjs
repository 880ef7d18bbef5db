// panva's openid-client (v6, a certified OpenID relying party) set up for zt's
// OpenID Provider, which the tests serve over HTTPS with a test CA.
//
// Trusting the test CA, with node 20: openid-client uses the global fetch, which
// verifies against Node's CA store. NODE_EXTRA_CA_CERTS=ca.pem in the environment
// works but only when set before node starts; node 20 has no runtime call to add a
// CA (tls.setDefaultCACertificates is node 22.19+), and its bundled undici is not
// importable, so its fetch's `dispatcher` cannot be given a CA. So config() hands
// openid-client a customFetch: undici's own fetch (the npm package, pinned in
// package.json) with an Agent whose connections trust exactly the CA file. It is
// kept on the Configuration for every later request (token, userinfo, JWKS).
import { readFileSync } from 'node:fs';
import * as client from 'openid-client';
import { Agent, fetch } from 'undici';

/** Discovers `issuer` (a URL string) and returns openid-client's Configuration for
 * the client, trusting only the CA in `caPath` for TLS when it is given. */
export async function config(issuer, clientId, clientSecret, caPath) {
  const options = {};
  if (caPath) {
    const dispatcher = new Agent({ connect: { ca: readFileSync(caPath) } });
    options[client.customFetch] = (url, init) => fetch(url, { ...init, dispatcher });
  }
  return client.discovery(new URL(issuer), clientId, clientSecret, undefined, options);
}
