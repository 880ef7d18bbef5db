// panva's openid-client (v6, a certified OpenID relying party) against zt's
// OpenID Provider: discovery, the code flow with PKCE S256, state and nonce, a
// person signing in with a password on the provider's own page, then refresh
// with rotation and reuse detection, introspection and revocation.
//
//   node tests/interop/oidc_rp.mjs '{"issuer", "client_id", "client_secret",
//     "ca", "redirect_uri", "username", "password"}'
//
// The sign-in is what a browser does, by hand: GET the authorization URL, read
// the password form's hidden fields and the __Host-zt-signin cookie, POST the
// form with that cookie and the issuer's Origin, follow nothing (the 303 goes to
// the client's redirect URI, which need not exist). Prints one JSON object, the
// summary the Rust test (crates/zt/tests/idp.rs) asserts on; exits 1 on an
// unexpected error.
import { readFileSync } from 'node:fs';
import * as client from 'openid-client';
import { Agent, fetch } from 'undici';
import { config } from './oidc_client.mjs';

const args = JSON.parse(process.argv[2]);
const dispatcher = new Agent({ connect: { ca: readFileSync(args.ca) } });
const origin = new URL(args.issuer).origin;
const scope = 'openid profile email offline_access';

/** The cookie pairs (name=value) a response sets, without their attributes. */
function cookies(response) {
  return response.headers.getSetCookie().map((c) => c.split(';')[0]).filter((c) => !c.endsWith('='));
}

/** The value of the hidden input `name` of a page. */
function hidden(html, name) {
  const match = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  if (!match) throw new Error(`no hidden ${name} field in the sign-in page: ${html.slice(0, 400)}`);
  return match[1];
}

/** Follows an authorization URL as a browser would; signs in with the password
 * when the provider shows its page. Returns the callback URL and the cookies. */
async function authorize(url, jar) {
  const page = await fetch(url, { dispatcher, redirect: 'manual', headers: { cookie: jar.join('; ') } });
  if (page.status === 303) return { callback: page.headers.get('location'), jar, signedIn: false };
  if (page.status !== 200) throw new Error(`GET /authorize: ${page.status} ${await page.text()}`);
  const html = await page.text();
  const signin = [...jar, ...cookies(page)];
  const form = new URLSearchParams({
    request: hidden(html, 'request'),
    csrf: hidden(html, 'csrf'),
    username: args.username,
    password: args.password,
  });
  const posted = await fetch(`${origin}/signin/password`, {
    dispatcher,
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: signin.join('; '), origin },
    body: form.toString(),
  });
  if (posted.status !== 303) throw new Error(`POST /signin/password: ${posted.status} ${await posted.text()}`);
  return { callback: posted.headers.get('location'), jar: cookies(posted), signedIn: true };
}

/** The OAuth error code of a refused call, or "none" if it succeeded. */
async function refusal(promise) {
  try {
    await promise;
    return 'none';
  } catch (e) {
    return e.error ?? e.code ?? String(e);
  }
}

const cfg = await config(args.issuer, args.client_id, args.client_secret, args.ca);
const summary = { issuer: cfg.serverMetadata().issuer };

// The code flow.
const verifier = client.randomPKCECodeVerifier();
const state = client.randomState();
const nonce = client.randomNonce();
const url = client.buildAuthorizationUrl(cfg, {
  redirect_uri: args.redirect_uri,
  scope,
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state,
  nonce,
});
const first = await authorize(url, []);
const tokens = await client.authorizationCodeGrant(cfg, new URL(first.callback), {
  pkceCodeVerifier: verifier,
  expectedState: state,
  expectedNonce: nonce,
  idTokenExpected: true,
});
const claims = tokens.claims();
summary.id_token = { iss: claims.iss, aud: claims.aud, nonce_matches: claims.nonce === nonce, amr: claims.amr };
summary.token_type = tokens.token_type;
summary.expires_in = tokens.expires_in;
const header = JSON.parse(Buffer.from(tokens.access_token.split('.')[0], 'base64url'));
summary.access_token_typ = header.typ;

// Refresh: rotated.
const refreshed = await client.refreshTokenGrant(cfg, tokens.refresh_token);
summary.rotated = refreshed.refresh_token !== tokens.refresh_token;
const active = await client.tokenIntrospection(cfg, refreshed.access_token);
summary.introspection = { active: active.active, sub: active.sub === claims.sub, client_id: active.client_id };

// Reuse: the spent token is refused and revokes the family, so the legitimate
// holder's current token is refused too.
summary.reuse = await refusal(client.refreshTokenGrant(cfg, tokens.refresh_token));
summary.after_reuse = await refusal(client.refreshTokenGrant(cfg, refreshed.refresh_token));
summary.refresh_introspection_after_reuse = (await client.tokenIntrospection(cfg, refreshed.refresh_token)).active;

// Revocation of an access token: inactive at once.
await client.tokenRevocation(cfg, refreshed.access_token);
summary.after_access_revocation = (await client.tokenIntrospection(cfg, refreshed.access_token)).active;

// A second flow rides the browser session (no sign-in page); revoking its
// refresh token ends the family.
const verifier2 = client.randomPKCECodeVerifier();
const state2 = client.randomState();
const url2 = client.buildAuthorizationUrl(cfg, {
  redirect_uri: args.redirect_uri,
  scope,
  code_challenge: await client.calculatePKCECodeChallenge(verifier2),
  code_challenge_method: 'S256',
  state: state2,
});
const second = await authorize(url2, first.jar);
summary.second_flow_signed_in_again = second.signedIn;
const tokens2 = await client.authorizationCodeGrant(cfg, new URL(second.callback), {
  pkceCodeVerifier: verifier2,
  expectedState: state2,
});
summary.before_refresh_revocation = (await client.tokenIntrospection(cfg, tokens2.refresh_token)).active;
await client.tokenRevocation(cfg, tokens2.refresh_token);
summary.after_refresh_revocation = (await client.tokenIntrospection(cfg, tokens2.refresh_token)).active;
summary.refresh_after_revocation = await refusal(client.refreshTokenGrant(cfg, tokens2.refresh_token));

console.log(JSON.stringify(summary));
