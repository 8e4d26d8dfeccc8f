// broker-auth web UI: sign up → confirm the emailed code → account page; sign in; reset a forgotten password with
// an emailed code; on the account page change the password, see the sessions and end them; log out.
//
// The session lives only in the HttpOnly cookie the API sets: this script never sees a token and never
// stores anything in localStorage or sessionStorage. Every request is same-origin with credentials.

// Relative to the page, so the UI also works when served under a path prefix.
const API_BASE = 'api/v1/auth';
const BRAND = 'Broker';

const VIEW_TITLES = {
  loading: 'Loading',
  signin: 'Sign in',
  signup: 'Create your account',
  verify: 'Confirm your email',
  recover: 'Reset your password',
  reset: 'Choose a new password',
  account: 'Your account',
};

const FALLBACK_MESSAGES = {
  400: 'The request could not be processed. Please check the form and try again.',
  401: 'Your email address or password is incorrect.',
  403: 'The password is not correct.',
  404: 'That was not found. It may already be gone.',
  409: 'An account with this email address already exists. Please sign in.',
  413: 'The form data is too large.',
  422: 'Please correct the highlighted fields.',
  429: 'Too many attempts. Please wait a moment and try again.',
  503: 'The service is temporarily unavailable. Please try again shortly.',
};
const GENERIC_FAILURE = 'Something went wrong on our side. Please try again.';
const NETWORK_FAILURE = 'Could not reach the server. Check your connection and try again.';

/** An API answer that was not 2xx, carrying the API's error body when it had one. */
class ApiError extends Error {
  constructor(status, body, retryAfterSeconds) {
    const error = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : {};
    super(typeof error.message === 'string' && error.message ? error.message : FALLBACK_MESSAGES[status] || GENERIC_FAILURE);
    this.name = 'ApiError';
    this.status = status;
    this.code = typeof error.code === 'string' ? error.code : '';
    this.fields = error.fields && typeof error.fields === 'object' ? error.fields : {};
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** fetch failed before any answer arrived (offline, server down, connection reset). */
class NetworkError extends Error {
  constructor() {
    super(NETWORK_FAILURE);
    this.name = 'NetworkError';
  }
}

function parseRetryAfter(value) {
  if (!value) return null;
  const seconds = Number.parseInt(value, 10);
  if (Number.isFinite(seconds) && String(seconds) === value.trim()) return Math.max(0, seconds);
  const date = Date.parse(value);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

async function callApi(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`${API_BASE}/${path}`, init);
  } catch {
    throw new NetworkError();
  }
  let data = null;
  if (response.status !== 204 && (response.headers.get('Content-Type') || '').includes('json')) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, data, parseRetryAfter(response.headers.get('Retry-After')));
  }
  return data;
}

function userFrom(data) {
  const user = data && typeof data === 'object' ? data.user : null;
  if (!user || typeof user !== 'object') throw new ApiError(500, null, null);
  return user;
}

function sessionsFrom(data) {
  const sessions = data && typeof data === 'object' ? data.sessions : null;
  if (!Array.isArray(sessions)) throw new ApiError(500, null, null);
  return sessions.filter((session) => session && typeof session === 'object');
}

const api = {
  me: async () => userFrom(await callApi('GET', 'me')),
  signup: (email) => callApi('POST', 'signup', { email }),
  verify: async (fields) => userFrom(await callApi('POST', 'verify', fields)),
  signin: async (email, password) => userFrom(await callApi('POST', 'signin', { email, password })),
  recover: (email) => callApi('POST', 'recover', { email }),
  recoverVerify: async (fields) => userFrom(await callApi('POST', 'recover/verify', fields)),
  changePassword: async (fields) => userFrom(await callApi('POST', 'password', fields)),
  sessions: async () => sessionsFrom(await callApi('GET', 'sessions')),
  endSession: (id) => callApi('DELETE', `sessions/${encodeURIComponent(id)}`),
  logout: () => callApi('POST', 'logout?scope=local'),
  logoutOthers: () => callApi('POST', 'logout?scope=others'),
};

// ---------------------------------------------------------------------------------------------------------------
// Page plumbing

const byId = (id) => {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element;
};

const statusRegion = byId('status');

function setStatus(message, { error = false } = {}) {
  statusRegion.classList.toggle('is-error', error);
  statusRegion.textContent = message || '';
}

/** Shows one view, hides the others, and moves focus into it so keyboard and screen-reader users follow along. */
function showView(name, focusTarget) {
  for (const view of Object.keys(VIEW_TITLES)) {
    byId(`view-${view}`).hidden = view !== name;
  }
  document.title = `${VIEW_TITLES[name]} · ${BRAND}`;
  const target = focusTarget || byId(`${name}-title`);
  target.focus();
}

function describedByIds(input) {
  return (input.getAttribute('aria-describedby') || '').split(/\s+/).filter(Boolean);
}

function fieldErrorElement(input) {
  const id = describedByIds(input).find((candidate) => candidate.endsWith('-error'));
  return id ? document.getElementById(id) : null;
}

/**
 * The API's field messages are predicates ("must be a valid email address"); with the field's label in front they
 * read as a sentence, also when a screen reader announces the message on its own.
 */
function asSentence(input, message) {
  const trimmed = message.trim();
  if (!/^[a-z]/.test(trimmed)) return trimmed;
  const label = input.labels && input.labels.length > 0 ? input.labels[0].textContent.trim() : '';
  const sentence = label ? `${label} ${trimmed}` : trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(sentence) ? sentence : `${sentence}.`;
}

function setFieldError(input, message) {
  const slot = fieldErrorElement(input);
  if (message) {
    input.setAttribute('aria-invalid', 'true');
    if (slot) {
      slot.textContent = asSentence(input, message);
      slot.hidden = false;
    }
  } else {
    input.removeAttribute('aria-invalid');
    if (slot) {
      slot.textContent = '';
      slot.hidden = true;
    }
  }
}

function formErrorElement(form) {
  return byId(`${form.id}-error`);
}

function setFormError(form, message) {
  const slot = formErrorElement(form);
  slot.textContent = message || '';
  slot.hidden = !message;
}

function clearErrors(form) {
  for (const input of form.querySelectorAll('input')) setFieldError(input, '');
  setFormError(form, '');
}

function withWaitHint(error) {
  if (error.status === 429 && error.retryAfterSeconds) {
    const seconds = error.retryAfterSeconds;
    const wait = seconds >= 120 ? `${Math.ceil(seconds / 60)} minutes` : `${seconds} second${seconds === 1 ? '' : 's'}`;
    return `${error.message} Wait time: ${wait}.`;
  }
  return error.message;
}

/** Error codes that are about one field, in a form that has that field: code → the field's name. */
const FIELD_OF_ERROR_CODE = {
  invalid_code: 'otp',
  // Only the change-password form has this field; a sign-in's invalid_credentials stays a form error.
  invalid_credentials: 'current_password',
};

/**
 * Puts an error where it belongs: the API's per-field messages next to their inputs (keys are the request's
 * field names, which are the inputs' names), a wrong or expired code on the code field, a wrong current password on
 * that field, everything else in the form's error area. Returns the input that should take focus, if any.
 */
function showError(form, error) {
  clearErrors(form);
  setStatus('');
  if (!(error instanceof ApiError)) {
    setFormError(form, error instanceof NetworkError ? error.message : GENERIC_FAILURE);
    return null;
  }
  const fieldMessages = { ...error.fields };
  const field = FIELD_OF_ERROR_CODE[error.code];
  if (field && !fieldMessages[field] && form.elements.namedItem(field) instanceof HTMLInputElement) {
    fieldMessages[field] = error.message;
  }

  let firstInvalid = null;
  const unplaced = [];
  for (const [name, message] of Object.entries(fieldMessages)) {
    const input = form.elements.namedItem(name);
    if (input instanceof HTMLInputElement && typeof message === 'string') {
      setFieldError(input, message);
      firstInvalid = firstInvalid || input;
    } else if (typeof message === 'string') {
      unplaced.push(message);
    }
  }
  if (!firstInvalid) {
    setFormError(form, withWaitHint(error));
  } else if (unplaced.length > 0) {
    setFormError(form, unplaced.join(' '));
  }
  // Focus the first invalid input in document order, not in the order the API listed the fields.
  const invalidInputs = form.querySelectorAll('input[aria-invalid="true"]');
  return invalidInputs.length > 0 ? invalidInputs[0] : null;
}

/**
 * Disables the button and shows its pending label while `work` runs; a second click meanwhile does nothing.
 * `work` may return an element to focus once the button is usable again (focus cannot land on a disabled button).
 */
async function withPending(button, work) {
  if (button.disabled) return;
  const idleLabel = button.textContent;
  const form = button.form;
  button.disabled = true;
  button.textContent = button.dataset.pendingLabel || 'Sending…';
  if (form) form.setAttribute('aria-busy', 'true');
  let focusTarget = null;
  try {
    focusTarget = await work();
  } finally {
    button.disabled = false;
    button.textContent = idleLabel;
    if (form) form.removeAttribute('aria-busy');
  }
  if (focusTarget) {
    focusTarget.focus();
  } else if (document.activeElement === document.body && !button.closest('[hidden]')) {
    // Disabling the focused button dropped focus to <body>; give it back so keyboard users keep their place.
    button.focus();
  }
}

function submitButton(form) {
  return form.querySelector('button[type="submit"]');
}

function concealPasswords(root) {
  for (const button of root.querySelectorAll('button.reveal')) setRevealed(button, false);
}

function setRevealed(button, revealed) {
  const input = byId(button.getAttribute('aria-controls'));
  input.type = revealed ? 'text' : 'password';
  button.textContent = revealed ? 'Hide' : 'Show';
  button.setAttribute('aria-label', revealed ? 'Hide password' : 'Show password');
}

// ---------------------------------------------------------------------------------------------------------------
// Views

const signinForm = byId('signin-form');
const signupForm = byId('signup-form');
const verifyForm = byId('verify-form');
const recoverForm = byId('recover-form');
const resetForm = byId('reset-form');
const passwordForm = byId('password-form');

/** A message in a small live region of its own (the change-password form, the sessions list). */
function setNotice(id, message) {
  byId(id).textContent = message || '';
}

function clearPasswordForm() {
  clearErrors(passwordForm);
  concealPasswords(passwordForm);
  passwordForm.elements.namedItem('current_password').value = '';
  passwordForm.elements.namedItem('password').value = '';
  setNotice('password-form-status', '');
}

function showAccount(user, message) {
  byId('account-name').textContent = user.name || '';
  byId('account-email').textContent = user.email || '';
  byId('account-id').textContent = user.id === undefined || user.id === null ? '' : String(user.id);
  const accountError = byId('account-error');
  accountError.textContent = '';
  accountError.hidden = true;
  clearPasswordForm();
  passwordForm.elements.namedItem('username').value = user.email || '';
  setStatus(message || '');
  showView('account');
  loadSessions();
}

function showSignin({ email } = {}) {
  clearErrors(signinForm);
  concealPasswords(signinForm);
  signinForm.elements.namedItem('password').value = '';
  const emailInput = signinForm.elements.namedItem('email');
  if (email !== undefined) emailInput.value = email;
  showView('signin');
}

function showSignup() {
  clearErrors(signupForm);
  const typed = verifyForm.elements.namedItem('email').value || signinForm.elements.namedItem('email').value;
  const emailInput = signupForm.elements.namedItem('email');
  if (!emailInput.value && typed) emailInput.value = typed;
  showView('signup');
}

function showVerify(email) {
  clearErrors(verifyForm);
  verifyForm.elements.namedItem('email').value = email;
  verifyForm.elements.namedItem('otp').value = '';
  byId('verify-lead').textContent =
    `Enter the 6-digit code we sent to ${email}, then choose your name and password.`;
  showView('verify', verifyForm.elements.namedItem('otp'));
}

function showRecover() {
  clearErrors(recoverForm);
  const typed = resetForm.elements.namedItem('email').value || signinForm.elements.namedItem('email').value;
  const emailInput = recoverForm.elements.namedItem('email');
  if (!emailInput.value && typed) emailInput.value = typed;
  showView('recover');
}

function showReset(email) {
  clearErrors(resetForm);
  concealPasswords(resetForm);
  resetForm.elements.namedItem('email').value = email;
  resetForm.elements.namedItem('otp').value = '';
  resetForm.elements.namedItem('password').value = '';
  byId('reset-lead').textContent = `Enter the 6-digit code we sent to ${email} and choose a new password.`;
  showView('reset', resetForm.elements.namedItem('otp'));
}

/**
 * An account-page request answered 401: the session ended elsewhere (signed out from another device, a password
 * change or reset, expiry). Back to sign-in, saying why. Returns whether the error was that.
 */
function handleEndedSession(error) {
  if (!(error instanceof ApiError && error.status === 401)) return false;
  if (!byId('view-account').hidden) {
    showSignin({ email: byId('account-email').textContent });
    setStatus('Your session has ended. Please sign in again.', { error: true });
  }
  return true;
}

signupForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const email = signupForm.elements.namedItem('email').value.trim();
  withPending(submitButton(signupForm), async () => {
    try {
      const answer = await api.signup(email);
      showVerify(email);
      setStatus((answer && answer.message) || `We sent a code to ${email}.`);
    } catch (error) {
      return showError(signupForm, error);
    }
  });
});

verifyForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const fields = {
    email: verifyForm.elements.namedItem('email').value.trim(),
    // People paste codes as "123 456"; the API wants the six digits.
    otp: verifyForm.elements.namedItem('otp').value.replace(/\s+/g, ''),
    name: verifyForm.elements.namedItem('name').value.trim(),
    password: verifyForm.elements.namedItem('password').value,
  };
  concealPasswords(verifyForm);
  withPending(submitButton(verifyForm), async () => {
    try {
      const user = await api.verify(fields);
      verifyForm.reset();
      showAccount(user, 'Your account is ready. Welcome!');
    } catch (error) {
      return showError(verifyForm, error);
    }
  });
});

byId('resend-code').addEventListener('click', (event) => {
  const button = event.currentTarget;
  const email = verifyForm.elements.namedItem('email').value.trim();
  withPending(button, async () => {
    try {
      const answer = await api.signup(email);
      clearErrors(verifyForm);
      verifyForm.elements.namedItem('otp').value = '';
      setStatus((answer && answer.message) || `We sent a new code to ${email}.`);
      return verifyForm.elements.namedItem('otp');
    } catch (error) {
      return showError(verifyForm, error);
    }
  });
});

signinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const email = signinForm.elements.namedItem('email').value.trim();
  const password = signinForm.elements.namedItem('password').value;
  concealPasswords(signinForm);
  withPending(submitButton(signinForm), async () => {
    try {
      const user = await api.signin(email, password);
      signinForm.elements.namedItem('password').value = '';
      clearErrors(signinForm);
      showAccount(user);
    } catch (error) {
      return showError(signinForm, error);
    }
  });
});

recoverForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const email = recoverForm.elements.namedItem('email').value.trim();
  withPending(submitButton(recoverForm), async () => {
    try {
      const answer = await api.recover(email);
      showReset(email);
      setStatus((answer && answer.message) || `If ${email} has an account, we sent a code to it.`);
    } catch (error) {
      return showError(recoverForm, error);
    }
  });
});

resetForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const fields = {
    email: resetForm.elements.namedItem('email').value.trim(),
    otp: resetForm.elements.namedItem('otp').value.replace(/\s+/g, ''),
    password: resetForm.elements.namedItem('password').value,
  };
  concealPasswords(resetForm);
  withPending(submitButton(resetForm), async () => {
    try {
      const user = await api.recoverVerify(fields);
      resetForm.reset();
      showAccount(user, 'Your password has been reset. Every other session was signed out.');
    } catch (error) {
      return showError(resetForm, error);
    }
  });
});

byId('resend-recovery-code').addEventListener('click', (event) => {
  const button = event.currentTarget;
  const email = resetForm.elements.namedItem('email').value.trim();
  withPending(button, async () => {
    try {
      const answer = await api.recover(email);
      clearErrors(resetForm);
      resetForm.elements.namedItem('otp').value = '';
      setStatus((answer && answer.message) || `We sent a new code to ${email}.`);
      return resetForm.elements.namedItem('otp');
    } catch (error) {
      return showError(resetForm, error);
    }
  });
});

byId('logout').addEventListener('click', (event) => {
  const button = event.currentTarget;
  const email = byId('account-email').textContent;
  withPending(button, async () => {
    try {
      await api.logout();
      showSignin({ email });
      setStatus('You have signed out.');
    } catch (error) {
      const slot = byId('account-error');
      slot.textContent = error instanceof ApiError || error instanceof NetworkError ? error.message : GENERIC_FAILURE;
      slot.hidden = false;
      return button;
    }
  });
});

passwordForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const fields = {
    current_password: passwordForm.elements.namedItem('current_password').value,
    password: passwordForm.elements.namedItem('password').value,
  };
  concealPasswords(passwordForm);
  setNotice('password-form-status', '');
  withPending(submitButton(passwordForm), async () => {
    try {
      await api.changePassword(fields);
      clearPasswordForm();
      setNotice('password-form-status', 'Your password has been changed. Your other sessions were signed out.');
      loadSessions();
    } catch (error) {
      if (handleEndedSession(error)) return null;
      return showError(passwordForm, error);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Sessions

const sessionsList = byId('sessions-list');
const sessionTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
// Each load gets a number; an answer to an older load (the list was asked for again meanwhile) is dropped.
let sessionsGeneration = 0;

const BROWSERS = [
  ['Edg/', 'Edge'],
  ['OPR/', 'Opera'],
  ['Firefox/', 'Firefox'],
  ['Chrome/', 'Chrome'],
  ['Safari/', 'Safari'],
];
const SYSTEMS = [
  ['Windows', 'Windows'],
  ['Android', 'Android'],
  ['iPhone', 'iOS'],
  ['iPad', 'iPadOS'],
  ['Mac OS X', 'macOS'],
  ['CrOS', 'ChromeOS'],
  ['Linux', 'Linux'],
];

/** "Firefox on Windows" from a user agent; the raw string is unreadable and says more than people need. */
function describeDevice(userAgent) {
  if (typeof userAgent !== 'string' || !userAgent.trim()) return 'Unknown device';
  const browser = BROWSERS.find(([token]) => userAgent.includes(token));
  const system = SYSTEMS.find(([token]) => userAgent.includes(token));
  if (!browser && !system) return userAgent.length > 60 ? `${userAgent.slice(0, 60)}…` : userAgent;
  return `${browser ? browser[1] : 'A browser'} on ${system ? system[1] : 'an unknown system'}`;
}

function timeElement(value) {
  const date = typeof value === 'string' ? new Date(value) : null;
  if (!date || Number.isNaN(date.getTime())) return document.createTextNode('Unknown');
  const time = document.createElement('time');
  time.dateTime = value;
  time.textContent = sessionTimeFormat.format(date);
  return time;
}

function fact(term, value, id) {
  const row = document.createElement('div');
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  if (id) dd.id = id;
  dd.append(value);
  row.append(dt, dd);
  return row;
}

function sessionItem(session, index) {
  const item = document.createElement('li');
  item.className = 'session';
  const deviceId = `session-${index}-device`;
  const createdId = `session-${index}-created`;

  const device = document.createElement('p');
  device.className = 'session-device';
  device.id = deviceId;
  device.textContent = describeDevice(session.user_agent);
  if (session.current === true) {
    item.classList.add('is-current');
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.textContent = 'This device';
    device.append(' ', badge);
  }

  const facts = document.createElement('dl');
  facts.className = 'session-facts';
  const ip = typeof session.ip_prefix === 'string' && session.ip_prefix ? session.ip_prefix : 'Unknown';
  facts.append(
    fact('IP address', ip),
    fact('Signed in', timeElement(session.created_at), createdId),
    fact('Last active', timeElement(session.last_seen_at)),
  );
  item.append(device, facts);

  if (session.current !== true) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'button secondary compact';
    button.textContent = 'Sign out';
    button.dataset.pendingLabel = 'Signing out…';
    // The visible "Sign out" is the name; which session it ends is read out as its description.
    button.setAttribute('aria-describedby', `${deviceId} ${createdId}`);
    button.addEventListener('click', () => endSession(button, session));
    item.append(button);
  }
  return item;
}

function renderSessions(sessions) {
  sessionsList.replaceChildren(...sessions.map(sessionItem));
  byId('logout-others').hidden = !sessions.some((session) => session.current !== true);
}

function showSessionsError(error) {
  const slot = byId('sessions-error');
  slot.textContent = error instanceof ApiError || error instanceof NetworkError ? withWaitHint(error) : GENERIC_FAILURE;
  slot.hidden = false;
}

/** Asks for the list again; `message` is announced once the fresh list is on screen. */
async function loadSessions(message) {
  const generation = ++sessionsGeneration;
  const slot = byId('sessions-error');
  slot.textContent = '';
  slot.hidden = true;
  sessionsList.setAttribute('aria-busy', 'true');
  if (!message) setNotice('sessions-status', '');
  try {
    const sessions = await api.sessions();
    if (generation !== sessionsGeneration) return;
    renderSessions(sessions);
    setNotice('sessions-status', message || '');
  } catch (error) {
    if (generation !== sessionsGeneration || handleEndedSession(error)) return;
    showSessionsError(error);
  } finally {
    if (generation === sessionsGeneration) sessionsList.setAttribute('aria-busy', 'false');
  }
}

function endSession(button, session) {
  const device = describeDevice(session.user_agent);
  withPending(button, async () => {
    try {
      await api.endSession(session.id);
      await loadSessions(`Signed out the session on ${device}.`);
    } catch (error) {
      if (handleEndedSession(error)) return null;
      if (error instanceof ApiError && error.status === 404) {
        await loadSessions('That session had already ended.');
      } else {
        showSessionsError(error);
        return button;
      }
    }
    // The button went with the old list; focus the list's heading so keyboard users keep their place.
    return byId('sessions-title');
  });
}

byId('logout-others').addEventListener('click', (event) => {
  const button = event.currentTarget;
  withPending(button, async () => {
    try {
      await api.logoutOthers();
      await loadSessions('Signed out everywhere else.');
    } catch (error) {
      if (handleEndedSession(error)) return null;
      showSessionsError(error);
      return button;
    }
    return button.hidden ? byId('sessions-title') : button;
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Shared controls

const GOTO = { signin: () => showSignin(), signup: showSignup, recover: showRecover };

for (const button of document.querySelectorAll('button[data-goto]')) {
  button.addEventListener('click', () => {
    setStatus('');
    GOTO[button.dataset.goto]();
  });
}

for (const button of document.querySelectorAll('button.reveal')) {
  button.addEventListener('click', () => {
    const input = byId(button.getAttribute('aria-controls'));
    setRevealed(button, input.type === 'password');
  });
}

// Editing a field clears its stale error, so the message never describes a value that is no longer there.
for (const form of [signinForm, signupForm, verifyForm, recoverForm, resetForm, passwordForm]) {
  form.addEventListener('input', (event) => {
    const input = event.target;
    if (input instanceof HTMLInputElement && input.getAttribute('aria-invalid') === 'true') setFieldError(input, '');
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Start: the session cookie decides between the account page and the sign-in / sign-up forms.

async function start() {
  try {
    showAccount(await api.me());
  } catch (error) {
    if (location.hash === '#signup') showSignup();
    else showSignin();
    if (!(error instanceof ApiError && error.status === 401)) {
      setStatus(error instanceof ApiError ? error.message : NETWORK_FAILURE, { error: true });
    }
  }
}

start();
