// Proves browser.mjs can do what the OpenID Provider's tests need of it: a passkey
// created and used on https://localhost under a test CA that is in no trust store,
// and refused for another RP ID. Serves a tiny page over HTTPS (a throwaway CA and
// leaf from test_ca.mjs), runs browser.mjs against it, checks the results and
// exits non-zero on any surprise.
//
//   node tests/interop/webauthn_selftest.mjs
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:https';
import { makeTestCa } from './test_ca.mjs';

const tls = makeTestCa();

// register() and signIn(rpId) are called by the steps; #register goes through a click.
const PAGE = `<!doctype html><title>webauthn self-test</title>
<input id=name><button id=register>register</button><p id=out></p>
<script>
const bytes = (s) => new TextEncoder().encode(s);
async function register() {
  const name = document.getElementById('name').value;
  const credential = await navigator.credentials.create({ publicKey: {
    rp: { id: 'localhost', name: 'zt' }, user: { id: bytes(name), name, displayName: name },
    challenge: crypto.getRandomValues(new Uint8Array(32)),
    pubKeyCredParams: [{ type: 'public-key', alg: -7 }],
    authenticatorSelection: { residentKey: 'required', userVerification: 'required' },
  } });
  return credential.id;
}
async function signIn(rpId) {
  const assertion = await navigator.credentials.get({ publicKey: {
    rpId, challenge: crypto.getRandomValues(new Uint8Array(32)),
    userVerification: 'required', timeout: 3000,
  } });
  return new TextDecoder().decode(assertion.response.userHandle);
}
const outcome = (promise) => promise.then((v) => 'ok ' + v, (e) => e.name + ': ' + e.message);
document.getElementById('register').onclick = async () => {
  const out = document.getElementById('out');
  out.textContent = await outcome(register());
  out.className = 'done';
};
</script>`;

const server = createServer(
  { key: readFileSync(tls.key), cert: readFileSync(tls.cert) },
  (_, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE));
await new Promise((resolve) => server.listen(0, 'localhost', resolve));
const origin = `https://localhost:${server.address().port}/`;

// Asynchronous: the server runs in this process and must keep answering.
const browser = (script) => new Promise((resolve) => {
  const proc = spawn(process.execPath, [new URL('browser.mjs', import.meta.url).pathname]);
  let stdout = '', stderr = '';
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.on('data', (d) => { stderr += d; });
  proc.on('close', (code) => resolve({ code, stdout, stderr }));
  proc.stdin.end(JSON.stringify(script));
});

let failed = false;
const check = (what, ok, detail) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${ok ? '' : `: ${detail}`}`);
  failed ||= !ok;
};

const passkeys = async (trust, how) => {
  const run = await browser({ ...trust, steps: [
    ['goto', origin],
    ['fill', '#name', 'alice'],
    ['click', '#register'],
    ['waitForSelector', '#out.done'],
    ['text', '#out'],
    ['credentials'],
    ['evaluate', "outcome(signIn('localhost'))"],
    ['evaluate', "outcome(signIn('example.com'))"],
    ['removeAuthenticator', 0],
    ['addAuthenticator', {}],
    ['evaluate', "outcome(signIn('localhost'))"],
    ['credentials'],
    ['url'],
  ] });
  console.log(`trusting the test CA ${how}:`);
  check('browser.mjs ran', run.code === 0, run.stderr);
  const [created, credentials, signedIn, otherRp, , afterSwap, newCredentials, url] =
    run.code === 0 ? JSON.parse(run.stdout).results.map((r) => r.value) : [];
  check('create with rp.id localhost, resident key and UV required', created?.startsWith('ok '), created);
  check('the virtual authenticator holds one resident credential for localhost',
    credentials?.length === 1 && credentials[0].rpId === 'localhost' && credentials[0].isResidentCredential,
    JSON.stringify(credentials));
  check('get with rpId localhost returns the user handle', signedIn === 'ok alice', signedIn);
  check('get with rpId example.com is refused', otherRp?.startsWith('SecurityError'), otherRp);
  check('a second authenticator alone has no passkey', afterSwap?.startsWith('NotAllowedError')
    && newCredentials?.length === 0, `${afterSwap} ${JSON.stringify(newCredentials)}`);
  check('url recorded', url === origin, url);
};

try {
  await passkeys({ cert: tls.cert }, "by the leaf's SPKI hash");
  await passkeys({ ca: tls.ca }, 'in an NSS database');
  console.log('and:');

  const untrusted = await browser({ steps: [['goto', origin]] });
  check('without the CA the page does not load', untrusted.code === 1
    && /ERR_CERT_AUTHORITY_INVALID/.test(untrusted.stderr), untrusted.stderr);
  const failing = await browser({ cert: tls.cert, steps: [['goto', origin], ['click', '#absent']], timeout: 1000 });
  check('a failing step is reported with its index and the page', failing.code === 1
    && /step 1 \["click","#absent"\]/.test(failing.stderr) && failing.stderr.includes(origin), failing.stderr);
} finally {
  server.close();
  rmSync(tls.dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
