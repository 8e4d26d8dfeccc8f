// A person's walk through the web UI in a real (headless) Chromium, against the api binary in embedded mode:
// sign up → the code from the server's log → a wrong code shows an error at the code field → a common password
// shows an error at the password field → the right code → account page → log out → sign in → account page.
//
// Build the binary first (`cargo build -p broker-auth-api`), then `npm ci && node --test walkthrough.test.mjs`.
// BROKER_AUTH_API_BIN overrides the binary's path; CHROMIUM_PATH overrides /usr/bin/chromium.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

// In embedded mode the mailer writes each mail to the log; this finds the 6-digit code in it.
const CODE_IN_LOG = /code[^0-9]{0,40}(\d{6})(?!\d)/gi;

const TEST_DIR = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = resolve(TEST_DIR, '..', '..');
const API_BIN = resolve(TEST_DIR, process.env.BROKER_AUTH_API_BIN || '../../target/debug/broker-auth-api');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = join(REPO_ROOT, 'target', 'browser');
const STARTUP_DEADLINE_MS = 60_000;
const CODE_DEADLINE_MS = 15_000;
const STEP_TIMEOUT_MS = 15_000;

const server = { process: null, log: '', exited: null, workDir: null, baseUrl: null };
let browser = null;

// Text logs may carry ANSI colours; strip them so the code regex and a reader see plain text.
const stripAnsi = (text) => text.replace(/\u001b\[[0-9;]*[A-Za-z]/g, '');

function printServerLog(reason) {
  if (!server.process) return;
  process.stderr.write(`\n----- broker-auth-api log (${reason}) -----\n${stripAnsi(server.log)}\n----- end of log -----\n`);
}

async function freePort() {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}

/** Polls `check` until it returns a truthy value or the deadline passes; never a fixed sleep. */
async function pollUntil(what, deadlineMs, check, intervalMs = 100) {
  const deadline = Date.now() + deadlineMs;
  let lastError = null;
  for (;;) {
    if (server.exited) {
      throw new Error(`broker-auth-api exited (${server.exited}) while waiting for ${what}`);
    }
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const cause = lastError ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}${cause}`);
    }
    await new Promise((wake) => setTimeout(wake, intervalMs));
  }
}

/** The code in the first mail logged after `fromOffset` of the captured log. */
function codeLoggedSince(fromOffset) {
  const text = stripAnsi(server.log.slice(fromOffset));
  CODE_IN_LOG.lastIndex = 0;
  const match = CODE_IN_LOG.exec(text);
  return match ? match[1] : null;
}

async function startServer() {
  if (!existsSync(API_BIN)) {
    throw new Error(
      `no api binary at ${API_BIN}: run \`cargo build -p broker-auth-api\` first (or set BROKER_AUTH_API_BIN)`,
    );
  }
  const port = await freePort();
  // A fresh working directory, so whatever embedded mode keeps beside its data stays out of the repo.
  server.workDir = await mkdtemp(join(tmpdir(), 'broker-auth-browser-'));
  const env = {
    ...process.env,
    API_LISTEN: `127.0.0.1:${port}`,
    DATABASE_URL: 'sqlite::memory:',
    RUST_LOG: 'info',
    LOG_FORMAT: 'text',
    NO_COLOR: '1',
  };
  // Embedded mode is chosen by the absence of KAFKA_BROKERS; none of the distributed settings may leak in.
  for (const name of ['KAFKA_BROKERS', 'KAFKA_TOPIC_PREFIX', 'REDIS_URL', 'SMTP_URL']) delete env[name];

  const child = spawn(API_BIN, [], { cwd: server.workDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  server.process = child;
  const capture = (chunk) => {
    server.log += chunk.toString('utf8');
  };
  child.stdout.on('data', capture);
  child.stderr.on('data', capture);
  child.on('error', (error) => {
    server.exited = `spawn failed: ${error.message}`;
  });
  child.on('exit', (code, signal) => {
    server.exited = signal ? `signal ${signal}` : `exit code ${code}`;
  });

  server.baseUrl = `http://127.0.0.1:${port}`;
  await pollUntil(`${server.baseUrl}/healthz to answer 200`, STARTUP_DEADLINE_MS, async () => {
    const response = await fetch(`${server.baseUrl}/healthz`, { signal: AbortSignal.timeout(2_000) });
    return response.ok;
  });
}

async function stopServer() {
  const child = server.process;
  if (!child || server.exited) return;
  const exited = new Promise((done) => child.once('exit', done));
  child.kill('SIGTERM');
  const stoppedInTime = await Promise.race([
    exited.then(() => true),
    new Promise((done) => setTimeout(() => done(false), 5_000).unref()),
  ]);
  if (!stoppedInTime) {
    child.kill('SIGKILL');
    await exited;
  }
}

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  // Pictures left by an earlier run must not pass for this run's.
  for (const stale of ['account.png', 'failure.png']) await rm(join(ARTIFACTS, stale), { force: true });
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium chromium-driver (or set CHROMIUM_PATH)`);
  }
  try {
    await startServer();
  } catch (error) {
    printServerLog('startup failed');
    throw error;
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  await stopServer();
  await writeFile(join(ARTIFACTS, 'server.log'), stripAnsi(server.log));
  if (server.workDir) await rm(server.workDir, { recursive: true, force: true });
});

test('a person signs up with the emailed code, sees the account page, logs out and signs in again', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);

  // Anything the page logs as an error (CSP violations included) fails the test; the browser's own
  // "Failed to load resource" lines are the expected 401/400 answers the UI handles.
  const pageProblems = [];
  page.on('pageerror', (error) => pageProblems.push(`uncaught: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      pageProblems.push(`console: ${message.text()}`);
    }
  });

  // The view on screen: the one <section> in <main> that is not hidden.
  const visibleView = () => page.locator('main > section:not([hidden])');
  const expectView = async (headingText) => {
    const heading = visibleView().getByRole('heading', { level: 1 });
    await heading.filter({ hasText: headingText }).waitFor({ state: 'visible' });
  };

  const email = `walkthrough-${randomLetters(10)}@example.com`;
  const name = 'Ada Lovelace';
  const password = `correct horse ${randomLetters(8)}`;

  try {
    const response = await page.goto(`${server.baseUrl}/`);
    assert.ok(response, 'navigating to / gave no response');
    assert.equal(response.status(), 200, 'GET / should serve the UI');
    const headers = response.headers();
    assert.match(headers['content-security-policy'] ?? '', /script-src 'self'/, 'GET / needs a strict CSP');
    assert.equal(headers['x-content-type-options'], 'nosniff');
    assert.ok(headers['referrer-policy'], 'GET / needs a Referrer-Policy');
    assert.ok(
      /frame-ancestors 'none'/.test(headers['content-security-policy'] ?? '') || headers['x-frame-options'],
      'GET / must deny framing',
    );

    // Not signed in: the UI offers sign-in, with a way to create an account.
    await expectView('Sign in');
    await page.getByRole('button', { name: 'Create an account' }).click();
    await expectView('Create your account');

    const logOffset = server.log.length;
    await visibleView().getByLabel('Email address').fill(email);
    await visibleView().getByRole('button', { name: 'Send code' }).click();
    await expectView('Confirm your email');
    assert.equal(await visibleView().getByLabel('Email address').inputValue(), email, 'the email is prefilled');

    const code = await pollUntil('the sign-up code in the server log', CODE_DEADLINE_MS, () =>
      codeLoggedSince(logOffset),
    );

    // A wrong code: the API's message appears at the code field, and the field is marked invalid.
    const codeField = visibleView().getByLabel('6-digit code');
    await codeField.fill(differentCode(code));
    await visibleView().getByLabel('Full name').fill(name);
    await visibleView().getByLabel('Password', { exact: true }).fill(password);
    await visibleView().getByRole('button', { name: 'Create account' }).click();
    await page.locator('#verify-otp[aria-invalid="true"]').waitFor({ state: 'attached' });
    const codeError = page.locator('.field', { has: page.locator('#verify-otp') }).locator('.field-error');
    await codeError.waitFor({ state: 'visible' });
    const codeErrorText = (await codeError.textContent())?.trim() ?? '';
    assert.ok(codeErrorText.length > 0, 'the wrong-code error next to the code field has text');
    const describedBy = (await page.locator('#verify-otp').getAttribute('aria-describedby')) ?? '';
    assert.ok(
      describedBy.split(/\s+/).includes(await codeError.getAttribute('id')),
      'the code field is described by its error message',
    );

    // A password on the common-password list: the API's message appears at the password field.
    await codeField.fill(code);
    const passwordField = visibleView().getByLabel('Password', { exact: true });
    await passwordField.fill('password123');
    await visibleView().getByRole('button', { name: 'Create account' }).click();
    await page.locator('#verify-password[aria-invalid="true"]').waitFor({ state: 'attached' });
    const passwordError = page.locator('#verify-password-error');
    await passwordError.waitFor({ state: 'visible' });
    const passwordErrorText = (await passwordError.textContent())?.trim() ?? '';
    assert.match(passwordErrorText, /common/i, 'the common-password message shows at the password field');

    // The right code and an uncommon password create the account and sign the person in.
    await passwordField.fill(password);
    await visibleView().getByRole('button', { name: 'Create account' }).click();
    await expectView('Your account');
    assert.equal((await page.locator('#account-email').textContent())?.trim(), email);
    assert.equal((await page.locator('#account-name').textContent())?.trim(), name);
    assert.ok(((await page.locator('#account-id').textContent()) ?? '').trim().length > 0, 'the account id shows');
    await page.screenshot({ path: join(ARTIFACTS, 'account.png'), fullPage: true });

    // The session is the HttpOnly cookie alone: nothing in web storage, and a reload stays signed in.
    const storedKeys = await page.evaluate(() => localStorage.length + sessionStorage.length);
    assert.equal(storedKeys, 0, 'the UI must not keep anything in localStorage or sessionStorage');
    await page.reload();
    await expectView('Your account');

    await page.getByRole('button', { name: 'Log out' }).click();
    await expectView('Sign in');
    await page.reload();
    await expectView('Sign in');

    // Sign in with the password chosen at sign-up.
    await visibleView().getByLabel('Email address').fill(email);
    await visibleView().getByLabel('Password', { exact: true }).fill(password);
    await visibleView().getByRole('button', { name: 'Sign in' }).click();
    await expectView('Your account');
    assert.equal((await page.locator('#account-email').textContent())?.trim(), email);
    assert.equal((await page.locator('#account-name').textContent())?.trim(), name);

    assert.deepEqual(pageProblems, [], 'the page logged errors');
  } catch (error) {
    await page.screenshot({ path: join(ARTIFACTS, 'failure.png'), fullPage: true }).catch(() => {});
    printServerLog('walkthrough failed');
    if (pageProblems.length > 0) process.stderr.write(`page problems:\n${pageProblems.join('\n')}\n`);
    throw error;
  } finally {
    await context.close();
  }
});

function randomLetters(count) {
  // Letters only, so no digits in the address can be mistaken for the code in the log.
  const alphabet = 'abcdefghijklmnopqrstuvwxyz';
  let out = '';
  for (let i = 0; i < count; i += 1) out += alphabet[Math.floor(Math.random() * alphabet.length)];
  return out;
}

function differentCode(code) {
  return String((Number(code) + 1) % 1_000_000).padStart(6, '0');
}
