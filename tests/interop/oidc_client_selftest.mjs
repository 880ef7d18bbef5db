// Proves oidc_client.mjs's trust mechanism: openid-client discovers an issuer
// served over HTTPS with a test CA when config() is given the CA, and refuses it
// when not. The server serves only a minimal /.well-known/openid-configuration.
//
//   node tests/interop/oidc_client_selftest.mjs
import { readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:https';
import { config } from './oidc_client.mjs';
import { makeTestCa } from './test_ca.mjs';

const tls = makeTestCa();
let issuer;
const server = createServer({ key: readFileSync(tls.key), cert: readFileSync(tls.cert) }, (req, res) => {
  if (req.url !== '/.well-known/openid-configuration') return res.writeHead(404).end();
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
    issuer, authorization_endpoint: `${issuer}/authorize`, token_endpoint: `${issuer}/token`,
    jwks_uri: `${issuer}/jwks`, response_types_supported: ['code'],
  }));
});
await new Promise((resolve) => server.listen(0, 'localhost', resolve));
issuer = `https://localhost:${server.address().port}`;

let failed = false;
try {
  const trusted = await config(issuer, 'client', 'secret', tls.ca);
  const ok = trusted.serverMetadata().issuer === issuer;
  console.log(`${ok ? 'ok  ' : 'FAIL'} discovery of ${issuer} with the test CA`);
  failed ||= !ok;
  const refused = await config(issuer, 'client', 'secret').then(() => 'discovered', (e) =>
    `${e.message} (${e.cause?.code ?? e.cause?.cause?.code ?? e.code})`);
  const no = /UNABLE_TO_VERIFY_LEAF_SIGNATURE/.test(refused);
  console.log(`${no ? 'ok  ' : 'FAIL'} discovery without the CA refused: ${refused}`);
  failed ||= !no;
} finally {
  server.close();
  rmSync(tls.dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
