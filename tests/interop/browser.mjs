// A real browser for the interop tests: Debian's Chromium, headless, driven by
// playwright-core, with a virtual WebAuthn authenticator (a passkey that needs no
// human), so the tests can sign in to zt's OpenID Provider as a person would.
//
//   node tests/interop/browser.mjs SCRIPT.json     (or the script on stdin)
//
// The script is {"steps": [...], "ca": PEM path, "cert": PEM path, "spki": [...],
// "timeout": ms, "authenticator": {...}}, every field but steps optional. A step is
// an array: ["goto", URL], ["click", SEL], ["fill", SEL, VALUE], ["waitForURL",
// GLOB | {"prefix": P} | {"regex": R}], ["waitForSelector", SEL], ["text", SEL],
// ["evaluate", JS expression, awaited], ["credentials"], ["removeCredentials"],
// ["url"], ["now"] (records Date.now()), ["run", [ARGV...]] (runs a command and
// waits for it: a test's action between two page loads), ["clearCookies"],
// ["gotoUntil", URL, PREFIX] (loads URL again every 50 ms until the page lands
// on a URL starting with PREFIX; records the attempts),
// ["addCredential", {credential}, N] (CDP WebAuthn.Credential: a key for
// any rpId, e.g. another site's), ["addAuthenticator", {options}] (records its id; the newest authenticator
// is the current one), ["removeAuthenticator", N]; ["credentials", N] and
// ["removeCredentials", N] act on authenticator N (0 the first), the current one
// without N. Chromium offers a request to every authenticator present, and allows
// one "internal" authenticator at a time: remove it first, or add a "usb" one.
// "authenticator" overrides the first authenticator's options (CDP
// WebAuthn.VirtualAuthenticatorOptions; ctap2, internal, resident key, user
// verification, verified, presence simulated by default).
//
// Prints {"results": [{"step", "op", "value"}...], "url"} for the steps that record
// something (text, evaluate, credentials, url, addAuthenticator). On failure it
// exits 1 and prints to stderr the step's index, the step, the error, the page's
// URL and the start of its text.
//
// HTTPS with a test CA (found with Chromium 156, playwright-core 1.65): WebAuthn
// wants a page without certificate error, so the test CA's certificates must
// verify. Two ways, both with verification left on:
//  - "cert": the leaf's PEM. Its SPKI's base64 SHA-256 goes to
//    --ignore-certificate-errors-spki-list, and Chromium treats a chain whose
//    leaf has that key as valid. Needs nothing else; the hash of the CA's key does
//    not work when the server sends only its leaf. "spki" takes ready hashes.
//  - "ca": the CA's PEM. It is added, trusted for TLS servers, to an NSS database
//    in a temporary HOME (certutil, from Debian's libnss3-tools), which Chromium
//    on Linux reads at $HOME/.pki/nssdb: a real chain check, name included.
// Playwright's ignoreHTTPSErrors also lets WebAuthn through in this Chromium, but
// it turns verification off altogether, so it is not offered here.
// ZT_CHROMIUM names another Chromium; /usr/bin/chromium by default.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate, createHash } from 'node:crypto';
import { chromium } from 'playwright-core';

const DEFAULT_AUTHENTICATOR = {
  protocol: 'ctap2',
  transport: 'internal',
  hasResidentKey: true,
  hasUserVerification: true,
  isUserVerified: true,
  automaticPresenceSimulation: true,
};

function readScript() {
  const path = process.argv[2];
  const text = path && path !== '-' ? readFileSync(path, 'utf8') : readFileSync(0, 'utf8');
  const script = JSON.parse(text);
  if (!Array.isArray(script.steps)) throw new Error('script has no "steps" array');
  return script;
}

function certificates(pemPath) {
  const pems = readFileSync(pemPath, 'utf8').match(
    /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (pems.length === 0) throw new Error(`${pemPath}: no certificate`);
  return pems;
}

// The base64 SHA-256 of each certificate's SPKI in a PEM file, as Chromium wants.
function spkiHashes(pemPath) {
  return certificates(pemPath).map((pem) => {
    const spki = new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' });
    return createHash('sha256').update(spki).digest('base64');
  });
}

// A HOME whose NSS database trusts the CAs of a PEM file for TLS servers.
function homeTrusting(pemPath) {
  const home = mkdtempSync(join(tmpdir(), 'zt-browser-'));
  const db = `sql:${join(home, '.pki', 'nssdb')}`;
  mkdirSync(join(home, '.pki', 'nssdb'), { recursive: true });
  execFileSync('certutil', ['-d', db, '-N', '--empty-password'], { stdio: 'pipe' });
  certificates(pemPath).forEach((pem, n) => execFileSync(
    'certutil', ['-d', db, '-A', '-t', 'C,,', '-n', `zt-test-ca-${n}`], { input: pem, stdio: 'pipe' }));
  return home;
}

function urlMatcher(pattern) {
  if (typeof pattern === 'string') return pattern;
  if (pattern?.prefix) return (url) => url.href.startsWith(pattern.prefix);
  if (pattern?.regex) return new RegExp(pattern.regex);
  throw new Error('waitForURL wants a glob, {"prefix"} or {"regex"}');
}

async function main() {
  const script = readScript();
  const timeout = script.timeout ?? 10000;
  const spki = [...(script.spki ?? [])];
  if (script.cert) spki.push(...spkiHashes(script.cert));
  const home = script.ca ? homeTrusting(script.ca) : undefined;
  process.on('exit', () => home && rmSync(home, { recursive: true, force: true }));
  const browser = await chromium.launch({
    executablePath: process.env.ZT_CHROMIUM || '/usr/bin/chromium',
    args: spki.length ? [`--ignore-certificate-errors-spki-list=${spki.join(',')}`] : [],
    env: home ? { ...process.env, HOME: home } : process.env,
  });
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const authenticators = [];
  const addAuthenticator = async (options) => {
    const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: { ...DEFAULT_AUTHENTICATOR, ...options },
    });
    authenticators.push(authenticatorId);
    return authenticatorId;
  };
  const authenticator = (n) => {
    const id = n === undefined ? authenticators.at(-1) : authenticators[n];
    if (!id) throw new Error(`no authenticator ${n ?? ''}`);
    return id;
  };
  await addAuthenticator(script.authenticator);

  const results = [];
  const consoleErrors = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  for (const [index, step] of script.steps.entries()) {
    const [op, a, b] = step;
    const record = (value) => results.push({ step: index, op, value });
    try {
      switch (op) {
        case 'goto': await page.goto(a); break;
        case 'click': await page.click(a); break;
        case 'fill': await page.fill(a, b); break;
        case 'waitForURL': await page.waitForURL(urlMatcher(a)); break;
        case 'waitForSelector': await page.waitForSelector(a); break;
        case 'text': record(await page.innerText(a)); break;
        case 'evaluate': record(await page.evaluate(a)); break;
        case 'url': record(page.url()); break;
        case 'now': record(Date.now()); break;
        case 'run': execFileSync(a[0], a.slice(1), { stdio: 'pipe' }); break;
        case 'clearCookies': await page.context().clearCookies(); break;
        case 'gotoUntil': {
          const deadline = Date.now() + timeout;
          let attempts = 0;
          for (;;) {
            attempts += 1;
            await page.goto(a);
            if (page.url().startsWith(b)) break;
            if (Date.now() > deadline) throw new Error(`still at ${page.url()} after ${attempts} loads`);
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
          record(attempts);
          break;
        }
        case 'credentials':
          record((await cdp.send('WebAuthn.getCredentials', { authenticatorId: authenticator(a) })).credentials);
          break;
        case 'removeCredentials':
          await cdp.send('WebAuthn.clearCredentials', { authenticatorId: authenticator(a) });
          break;
        case 'addCredential':
          await cdp.send('WebAuthn.addCredential', { authenticatorId: authenticator(b), credential: a });
          break;
        case 'addAuthenticator': record(await addAuthenticator(a)); break;
        case 'removeAuthenticator': {
          const authenticatorId = authenticator(a);
          await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId });
          authenticators.splice(authenticators.indexOf(authenticatorId), 1);
          break;
        }
        default: throw new Error(`unknown step ${JSON.stringify(op)}`);
      }
    } catch (error) {
      const text = await page.evaluate(() => document.body?.innerText ?? '').catch(() => '');
      process.stderr.write([
        `browser.mjs: step ${index} ${JSON.stringify(step)} failed: ${error.message.split('\n')[0]}`,
        `  url: ${page.url()}`,
        `  page text: ${JSON.stringify(text.slice(0, 500))}`,
        ...consoleErrors.slice(-5).map((e) => `  console: ${e}`),
        '',
      ].join('\n'));
      await browser.close();
      process.exit(1);
    }
  }
  process.stdout.write(JSON.stringify({ results, url: page.url() }) + '\n');
  await browser.close();
}

main().catch((error) => {
  process.stderr.write(`browser.mjs: ${error.message}\n`);
  process.exit(1);
});
