// A person's walk through the web UI in a real (headless) Chromium, against the api binary in embedded mode:
// sign up → the code from the server's log → a wrong code shows an error at the code field → a common password
// shows an error at the password field → the right code → account page → log out → sign in → account page.
// A second walk uses two browser contexts as two devices: the account page's sessions list ends the other device's
// session (one by one and "everywhere else"), the password is changed, then reset with an emailed recovery code.
// Every view on the way is checked with axe-core for WCAG 2.2 A/AA violations, in the light and the dark scheme.
//
// Build the binary first (`cargo build -p broker-auth-api`), then `npm ci && node --test walkthrough.test.mjs`.
// BROKER_AUTH_API_BIN overrides the binary's path; CHROMIUM_PATH overrides /usr/bin/chromium.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
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

const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
// The rules of WCAG 2.0, 2.1 and 2.2 at levels A and AA (axe tags each rule with the version that added it).
const WCAG_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22a', 'wcag22aa'];
const AUTH_API = '/api/v1/auth';

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
  for (const stale of await readdir(ARTIFACTS)) {
    if (stale.endsWith('.png')) await rm(join(ARTIFACTS, stale), { force: true });
  }
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

/**
 * A browser context with one page: one "device". Anything the page logs as an error (CSP violations included)
 * is collected in `problems`; the browser's own "Failed to load resource" lines are the expected 401/400 answers
 * the UI handles.
 */
async function openDevice(name) {
  // Reduced motion switches the UI's colour transitions off, so axe never measures a colour halfway through one.
  const context = await browser.newContext({ viewport: { width: 1100, height: 860 }, reducedMotion: 'reduce' });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const problems = [];
  page.on('pageerror', (error) => problems.push(`${name}: uncaught: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      problems.push(`${name}: console: ${message.text()}`);
    }
  });
  // The view on screen: the one <section> in <main> that is not hidden.
  const visibleView = () => page.locator('main > section:not([hidden])');
  const expectView = async (headingText) => {
    const heading = visibleView().getByRole('heading', { level: 1 });
    await heading.filter({ hasText: headingText }).waitFor({ state: 'visible' });
  };
  return { name, context, page, problems, visibleView, expectView };
}

/** Saves a picture of each device's page and prints the server log; for a failed walk. */
async function keepEvidence(devices) {
  for (const device of devices) {
    await device.page.screenshot({ path: join(ARTIFACTS, `failure-${device.name}.png`), fullPage: true }).catch(() => {});
  }
  printServerLog('walkthrough failed');
  const problems = devices.flatMap((device) => device.problems);
  if (problems.length > 0) process.stderr.write(`page problems:\n${problems.join('\n')}\n`);
}

/**
 * Fails with a readable list when axe-core finds a WCAG 2.2 A/AA violation on the page as it is now, in the light
 * and in the dark colour scheme.
 *
 * The page's CSP (script-src 'self') refuses an injected <script> element, so page.addScriptTag cannot load axe.
 * page.evaluate runs through the DevTools protocol instead, which CSP does not govern: the axe source is evaluated
 * as it is, into the page's own window, while the CSP stays in force for everything else. (bypassCSP: true would
 * switch the policy off for the whole context, and the walk would no longer notice the UI breaking it.)
 */
async function assertAccessible(device, view) {
  const { page } = device;
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE_SOURCE);
  const found = [];
  for (const colorScheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme });
    const violations = await page.evaluate(async (tags) => {
      const results = await window.axe.run(document, {
        runOnly: { type: 'tag', values: tags },
        resultTypes: ['violations'],
      });
      return results.violations.map((violation) => ({
        id: violation.id,
        impact: violation.impact,
        help: violation.help,
        nodes: violation.nodes.map((node) => ({ target: node.target.join(' '), summary: node.failureSummary })),
      }));
    }, WCAG_TAGS);
    for (const violation of violations) found.push({ colorScheme, ...violation });
    if (violations.length > 0) {
      await page.screenshot({ path: join(ARTIFACTS, `axe-${slug(view)}-${colorScheme}.png`), fullPage: true });
    }
  }
  await page.emulateMedia({ colorScheme: 'light' });
  if (found.length > 0) {
    const report = found
      .map(
        (violation) =>
          `- ${violation.id} (${violation.impact}, ${violation.colorScheme} scheme): ${violation.help}\n` +
          violation.nodes.map((node) => `    ${node.target}\n      ${node.summary.replace(/\n/g, '\n      ')}`).join('\n'),
      )
      .join('\n');
    assert.fail(`axe-core found WCAG 2.2 A/AA violations on the "${view}" view:\n${report}`);
  }
}

/** Waits until the account page's sessions list has loaded and shows `count` sessions. */
async function expectSessions(device, count) {
  const { page } = device;
  await page.locator('#sessions-list[aria-busy="false"]').waitFor({ state: 'attached' });
  await pollUntil(`${device.name}'s sessions list to show ${count} sessions`, STEP_TIMEOUT_MS, async () => {
    return (await page.locator('#sessions-list > li').count()) === count;
  });
  return page.locator('#sessions-list > li');
}

async function signIn(device, email, password) {
  const { visibleView, expectView } = device;
  await expectView('Sign in');
  await visibleView().getByLabel('Email address').fill(email);
  await visibleView().getByLabel('Password', { exact: true }).fill(password);
  await visibleView().getByRole('button', { name: 'Sign in' }).click();
  await expectView('Your account');
}

/** GET /me with the device's cookies: 200 while its session lives, 401 once it has ended. */
async function meStatus(device) {
  const response = await device.context.request.get(`${server.baseUrl}${AUTH_API}/me`);
  return response.status();
}

test('a person signs up with the emailed code, sees the account page, logs out and signs in again', async (t) => {
  const device = await openDevice('device');
  const { page, visibleView, expectView } = device;
  const checkedViews = [];
  const checkAccessibility = async (view) => {
    await assertAccessible(device, view);
    checkedViews.push(view);
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
    await checkAccessibility('sign in');
    await page.getByRole('button', { name: 'Create an account' }).click();
    await expectView('Create your account');
    await checkAccessibility('sign up');

    const logOffset = server.log.length;
    await visibleView().getByLabel('Email address').fill(email);
    await visibleView().getByRole('button', { name: 'Send code' }).click();
    await expectView('Confirm your email');
    assert.equal(await visibleView().getByLabel('Email address').inputValue(), email, 'the email is prefilled');
    await checkAccessibility('enter code');

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
    await checkAccessibility('enter code, wrong code');

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
    await expectSessions(device, 1);
    await page.screenshot({ path: join(ARTIFACTS, 'account.png'), fullPage: true });
    await checkAccessibility('account');

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
    await signIn(device, email, password);
    assert.equal((await page.locator('#account-email').textContent())?.trim(), email);
    assert.equal((await page.locator('#account-name').textContent())?.trim(), name);

    assert.deepEqual(device.problems, [], 'the page logged errors');
    t.diagnostic(`axe-core: no WCAG 2.2 A/AA violations (light and dark) on: ${checkedViews.join('; ')}`);
  } catch (error) {
    await keepEvidence([device]);
    throw error;
  } finally {
    await device.context.close();
  }
});

test('a person ends the sessions of another device, changes the password and resets a forgotten one', async (t) => {
  // Two browser contexts share no cookies: two devices of the same person.
  const laptop = await openDevice('laptop');
  const phone = await openDevice('phone');
  const { page, visibleView, expectView } = laptop;
  const checkedViews = [];
  const checkAccessibility = async (view) => {
    await assertAccessible(laptop, view);
    checkedViews.push(view);
  };

  const email = `sessions-${randomLetters(10)}@example.com`;
  const name = 'Grace Hopper';
  const firstPassword = `first pass ${randomLetters(8)}`;
  const changedPassword = `second pass ${randomLetters(8)}`;
  const resetPassword = `third pass ${randomLetters(8)}`;

  try {
    // Sign up on the laptop.
    await page.goto(`${server.baseUrl}/#signup`);
    await expectView('Create your account');
    const signupOffset = server.log.length;
    await visibleView().getByLabel('Email address').fill(email);
    await visibleView().getByRole('button', { name: 'Send code' }).click();
    await expectView('Confirm your email');
    const signupCode = await pollUntil('the sign-up code in the server log', CODE_DEADLINE_MS, () =>
      codeLoggedSince(signupOffset),
    );
    await visibleView().getByLabel('6-digit code').fill(signupCode);
    await visibleView().getByLabel('Full name').fill(name);
    await visibleView().getByLabel('Password', { exact: true }).fill(firstPassword);
    await visibleView().getByRole('button', { name: 'Create account' }).click();
    await expectView('Your account');
    let sessions = await expectSessions(laptop, 1);
    assert.match((await sessions.first().textContent()) ?? '', /This device/, 'the only session is this one');
    assert.equal(
      await page.getByRole('button', { name: 'Sign out everywhere else' }).count(),
      0,
      'with no other session there is nothing to sign out elsewhere',
    );

    // The phone signs in too; the laptop's list shows both, this one marked.
    await phone.page.goto(`${server.baseUrl}/`);
    await signIn(phone, email, firstPassword);
    await page.reload();
    await expectView('Your account');
    sessions = await expectSessions(laptop, 2);
    assert.equal(await sessions.filter({ hasText: 'This device' }).count(), 1, 'exactly one session is this one');
    const phoneSession = sessions.filter({ hasNotText: 'This device' });
    for (const term of ['IP address', 'Signed in', 'Last active']) {
      assert.match((await phoneSession.textContent()) ?? '', new RegExp(term), `a session shows its ${term}`);
    }
    await page.screenshot({ path: join(ARTIFACTS, 'sessions.png'), fullPage: true });
    await checkAccessibility('account, two sessions');

    // Sign the phone out from the laptop: the list is down to this session, and the phone is signed out.
    await phoneSession.getByRole('button', { name: 'Sign out', exact: true }).click();
    await expectSessions(laptop, 1);
    await page.locator('#sessions-status', { hasText: 'Signed out' }).waitFor({ state: 'visible' });
    await phone.page.reload();
    await phone.expectView('Sign in');
    assert.equal(await meStatus(phone), 401, "the phone's session was ended");
    assert.equal(await meStatus(laptop), 200, "the laptop's session lives on");

    // Once more with "Sign out everywhere else".
    await signIn(phone, email, firstPassword);
    await page.reload();
    await expectView('Your account');
    await expectSessions(laptop, 2);
    await page.getByRole('button', { name: 'Sign out everywhere else' }).click();
    await expectSessions(laptop, 1);
    await page.locator('#sessions-status', { hasText: 'everywhere else' }).waitFor({ state: 'visible' });
    assert.equal(await meStatus(phone), 401, "the phone's session was ended");
    assert.equal(await meStatus(laptop), 200, "the laptop's session lives on");
    await checkAccessibility('account, after signing out everywhere else');

    // Change the password: a wrong current password shows at its field, the right one changes it.
    const passwordForm = page.locator('#password-form');
    await passwordForm.getByLabel('Current password').fill(`wrong ${firstPassword}`);
    await passwordForm.getByLabel('New password').fill(changedPassword);
    await passwordForm.getByRole('button', { name: 'Change password' }).click();
    await page.locator('#password-current[aria-invalid="true"]').waitFor({ state: 'attached' });
    await page.locator('#password-current-error', { hasText: 'not correct' }).waitFor({ state: 'visible' });
    await checkAccessibility('account, wrong current password');
    await passwordForm.getByLabel('Current password').fill(firstPassword);
    await passwordForm.getByRole('button', { name: 'Change password' }).click();
    await page.locator('#password-form-status', { hasText: 'changed' }).waitFor({ state: 'visible' });
    assert.equal(await page.locator('#password-current').inputValue(), '', 'the form is emptied after a change');
    await checkAccessibility('account, password changed');
    assert.equal(await meStatus(laptop), 200, 'changing the password keeps this session');

    // The new password signs in (on the phone); the old one no longer does.
    await phone.page.reload();
    await phone.expectView('Sign in');
    await phone.visibleView().getByLabel('Email address').fill(email);
    await phone.visibleView().getByLabel('Password', { exact: true }).fill(firstPassword);
    await phone.visibleView().getByRole('button', { name: 'Sign in' }).click();
    await phone.page.locator('#signin-form-error').waitFor({ state: 'visible' });
    await signIn(phone, email, changedPassword);

    // Log out on the laptop and reset the forgotten password with an emailed code.
    await page.getByRole('button', { name: 'Log out' }).click();
    await expectView('Sign in');
    await visibleView().getByRole('button', { name: 'Forgot password?' }).click();
    await expectView('Reset your password');
    assert.equal(await visibleView().getByLabel('Email address').inputValue(), email, 'the email is carried over');
    await checkAccessibility('recovery: email');
    const recoveryOffset = server.log.length;
    await visibleView().getByRole('button', { name: 'Send code' }).click();
    await expectView('Choose a new password');
    assert.equal(await visibleView().getByLabel('Email address').inputValue(), email, 'the email is prefilled');
    await checkAccessibility('recovery: code and new password');
    const recoveryCode = await pollUntil('the recovery code in the server log', CODE_DEADLINE_MS, () =>
      codeLoggedSince(recoveryOffset),
    );

    // A wrong code shows at the code field; a common password at the password field.
    const codeField = visibleView().getByLabel('6-digit code');
    const newPasswordField = visibleView().getByLabel('New password');
    await codeField.fill(differentCode(recoveryCode));
    await newPasswordField.fill(resetPassword);
    await visibleView().getByRole('button', { name: 'Set new password' }).click();
    await page.locator('#reset-otp[aria-invalid="true"]').waitFor({ state: 'attached' });
    await page.locator('#reset-otp-error').waitFor({ state: 'visible' });
    await checkAccessibility('recovery: wrong code');
    await codeField.fill(recoveryCode);
    await newPasswordField.fill('password123');
    await visibleView().getByRole('button', { name: 'Set new password' }).click();
    await page.locator('#reset-password[aria-invalid="true"]').waitFor({ state: 'attached' });
    assert.match(
      (await page.locator('#reset-password-error').textContent()) ?? '',
      /common/i,
      'the common-password message shows at the new password field',
    );

    // The right code and a good password: signed in, and every other session (the phone's) has ended.
    await newPasswordField.fill(resetPassword);
    await visibleView().getByRole('button', { name: 'Set new password' }).click();
    await expectView('Your account');
    assert.equal((await page.locator('#account-email').textContent())?.trim(), email);
    await expectSessions(laptop, 1);
    await checkAccessibility('account, after a password reset');
    assert.equal(await meStatus(phone), 401, 'a password reset ends every other session');
    await phone.page.reload();
    await phone.expectView('Sign in');

    // Log out, and the newest password is the one that signs in.
    await page.getByRole('button', { name: 'Log out' }).click();
    await expectView('Sign in');
    await visibleView().getByLabel('Email address').fill(email);
    await visibleView().getByLabel('Password', { exact: true }).fill(changedPassword);
    await visibleView().getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#signin-form-error').waitFor({ state: 'visible' });
    await checkAccessibility('sign in, wrong password');
    await signIn(laptop, email, resetPassword);
    assert.equal((await page.locator('#account-name').textContent())?.trim(), name);

    assert.deepEqual([...laptop.problems, ...phone.problems], [], 'the pages logged errors');
    t.diagnostic(`axe-core: no WCAG 2.2 A/AA violations (light and dark) on: ${checkedViews.join('; ')}`);
  } catch (error) {
    await keepEvidence([laptop, phone]);
    throw error;
  } finally {
    await laptop.context.close();
    await phone.context.close();
  }
});

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

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
