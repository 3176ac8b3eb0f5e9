// The dtx web console: a small single-page view of dtxd's JSON API
// (Schemas/coordinator-api.yaml). Plain ES2020, no dependencies, no build step.
// Every string from the server reaches the page as a text node, never as HTML.
'use strict';

const STATUSES = ['active', 'preparing', 'pre_committing', 'committing', 'aborting', 'trying', 'confirming',
  'cancelling', 'running', 'compensating', 'prepared', 'failed', 'committed', 'aborted'];
const PROTOCOLS = ['2pc', '3pc', 'tcc', 'saga', 'msg'];
const AGES = [['', 'any age'], ['60', 'older than 1 min'], ['600', 'older than 10 min'],
  ['3600', 'older than 1 h'], ['86400', 'older than 1 day']];
const FILTERS = ['status', 'protocol', 'participant', 'olderThan'];
// Phase two: the decision is being delivered, so a branch can be declared ended by hand.
const PHASE_TWO = new Set(['committing', 'aborting', 'confirming', 'cancelling']);
const RESOLVABLE = new Set(['2pc', '3pc', 'tcc']);
// Branch states after which dtxd owes the branch nothing more.
const BRANCH_DONE = new Set(['committed', 'rolled_back', 'read_only', 'voted_no', 'confirmed', 'cancelled',
  'done', 'compensated']);
const FAILED_ANSWERS = new Set(['refused', 'failed', 'not delivered']);
const PAGE_SIZE = 100;
const REFRESH_MS = 2000;
const REFRESH_ROWS = 1000;
// The API lives next to /ui/, wherever dtxd is mounted.
const BASE = location.pathname.replace(/ui\/[^/]*$/, '');

const $ = (id) => document.getElementById(id);

// ---- DOM helpers ------------------------------------------------------------------

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  return el;
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // a string becomes a text node
  }
  return el;
}

/** An HTML element: h('td', {class: 'x'}, 'text', child, [more]). */
const h = (tag, attrs, ...children) => appendAll(setAttrs(document.createElement(tag), attrs), children);
/** An SVG element, likewise. */
const svg = (tag, attrs, ...children) =>
  appendAll(setAttrs(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs), children);

function table(id, headings, rows, empty) {
  return h('table', { id, class: 'grid' },
    h('thead', {}, h('tr', {}, headings.map((title) => h('th', {}, title)))),
    h('tbody', {}, rows.length ? rows : h('tr', { class: 'empty' }, h('td', { colspan: headings.length }, empty))));
}

const badge = (cls, text, title) => h('span', { class: `badge ${cls}`, title }, text);
const statusWord = (status) => h('span', { class: 'status', 'data-status': status }, status);

// ---- Formatting -------------------------------------------------------------------

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}
const age = (iso) => duration((Date.now() - Date.parse(iso)) / 1000);
const when = (iso) => (iso ? iso.replace('T', ' ') : '—'); // the API's timestamps are UTC
const clip = (text, max) => (text.length > max ? text.slice(0, max - 1) + '…' : text);
const txHref = (gid) => '#/transactions/' + encodeURIComponent(gid);

// ---- The API ----------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, sentToken) {
    super(message);
    Object.assign(this, { status, code, sentToken });
  }
}

const auth = {
  get token() { return sessionStorage.getItem('dtx-token') || ''; },
  set token(value) {
    if (value) sessionStorage.setItem('dtx-token', value); else sessionStorage.removeItem('dtx-token');
    $('sign-out').hidden = !value;
  },
  asking: false, // the token form is shown instead of the page
};

async function api(method, path, body) {
  const token = auth.token;
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(BASE + path, {
      method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `cannot reach dtxd (${method} /${path}): ${e.message}`, !!token);
  }
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* reported below */ }
  if (response.ok && json !== null) return json;
  const error = json && json.error;
  const message = error && error.message
    ? error.message
    : `${method} /${path} answered HTTP ${response.status}${text ? ': ' + clip(text, 300) : ' with no body'}`;
  throw new ApiError(response.status, (error && error.code) || `http_${response.status}`, message, !!token);
}

// ---- Errors and the token form ------------------------------------------------------

let errorSource = null; // who showed the error: a refresh clears only its own

function showError(message, source) {
  errorSource = source;
  $('error').replaceChildren(h('span', { class: 'error-text' }, message),
    h('button', { type: 'button', class: 'link dismiss', title: 'dismiss', onclick: () => clearError() }, '×'));
  $('error').hidden = false;
}

function clearError(source) {
  if (source && source !== errorSource) return;
  errorSource = null;
  $('error').hidden = true;
  $('error').replaceChildren();
}

/** Every failed request ends here: a 401 asks for a token, anything else is shown. */
function handle(error, source) {
  if (error.status === 401) askForToken(error);
  else showError(error.message, source);
}

function askForToken(error) {
  // A request sent without a token answers late when the form is up already, or a
  // token was entered since: it says nothing new (it would wipe "token refused").
  if (!error.sentToken && (auth.asking || auth.token)) return;
  // A refused token is forgotten; a request that carried none just needs one.
  const refused = error.sentToken;
  auth.token = '';
  auth.asking = true;
  view.page = null;
  view.generation++;
  $('page').replaceChildren();
  clearError();
  $('token-form').hidden = false;
  $('token-error').textContent = refused ? `token refused: ${error.message}` : '';
  $('token-error').hidden = !refused;
  $('token-input').value = '';
  $('token-input').focus();
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = $('token-input').value.trim();
  if (!token) {
    $('token-error').textContent = 'enter the token';
    $('token-error').hidden = false;
    return;
  }
  auth.token = token;
  auth.asking = false;
  $('token-form').hidden = true;
  route(); // a 401 again brings the form back, saying the token was refused
});

$('sign-out').addEventListener('click', () => {
  auth.token = '';
  view.page = null;
  route();
});

const operatorInput = $('operator');
operatorInput.value = localStorage.getItem('dtx-operator') || '';
operatorInput.addEventListener('input', () => localStorage.setItem('dtx-operator', operatorInput.value.trim()));

// ---- Routing and refreshing ---------------------------------------------------------

// generation grows at each navigation: answers to requests of an earlier one are dropped.
const view = { page: null, generation: 0 };

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean);
  if (parts.length === 0 || (parts[0] === 'transactions' && parts.length === 1)) {
    return { kind: 'list', params: new URLSearchParams(query) };
  }
  if (parts[0] === 'transactions') {
    try {
      return { kind: 'transaction', gid: decodeURIComponent(parts.slice(1).join('/')) };
    } catch {
      return { kind: 'unknown', path };
    }
  }
  if (parts[0] === 'participants') return { kind: 'participants' };
  return { kind: 'unknown', path };
}

function route() {
  const target = parseHash();
  view.generation++;
  clearError();
  for (const link of document.querySelectorAll('nav a')) {
    link.classList.toggle('current', link.dataset.nav === (target.kind === 'transaction' ? 'list' : target.kind));
  }
  if (auth.asking) return; // the token form stays until a token is entered
  // A new filter on the list keeps its form and table (no flicker, nothing typed is lost).
  if (target.kind === 'list' && view.page && view.page.kind === 'list') {
    view.page.show(target.params);
    return;
  }
  const pages = { list: listPage, transaction: transactionPage, participants: participantsPage, unknown: unknownPage };
  view.page = pages[target.kind](target);
}

/** Runs a page's request, dropping its answer if the user went elsewhere meanwhile. */
async function load(source, work) {
  const generation = view.generation;
  const current = () => generation === view.generation;
  try {
    await work(current);
    if (current()) clearError(source);
  } catch (error) {
    if (current()) handle(error, source);
  }
}

async function refreshCounts() {
  try {
    const health = await api('GET', 'healthz');
    const show = (id, value) => {
      $(id).textContent = Number.isInteger(value) ? String(value) : '–';
      $(id).parentElement.classList.toggle('alert', id !== 'count-participants' && id !== 'count-unfinished' && value > 0);
    };
    show('count-unfinished', health.unfinishedTransactions);
    show('count-stuck', health.stuckTransactions);
    show('count-in-doubt', health.inDoubtTransactions);
    show('count-participants', health.participants);
    $('last-refresh').textContent = new Date().toLocaleTimeString([], { hour12: false });
    clearError('counts');
  } catch (error) {
    showError(`cannot refresh the counts: ${error.message}`, 'counts');
  }
}

let ticking = false;
async function tick() {
  if (ticking) return; // the previous refresh is still waiting for dtxd
  ticking = true;
  try {
    const page = view.page;
    await Promise.all([refreshCounts(), !auth.asking && page && page.refresh ? page.refresh() : null]);
  } finally {
    ticking = false;
  }
}

// ---- The list of transactions --------------------------------------------------------

function listPage(target) {
  const page = { kind: 'list', rows: [], next: null, filters: new URLSearchParams() };

  const status = h('select', { id: 'filter-status' }, h('option', { value: '' }, 'any'),
    STATUSES.map((word) => h('option', { value: word }, word)),
    h('option', { value: 'stuck' }, 'stuck'), h('option', { value: 'in_doubt' }, 'in_doubt'));
  const protocol = h('select', { id: 'filter-protocol' }, h('option', { value: '' }, 'any'),
    PROTOCOLS.map((p) => h('option', { value: p }, p)));
  const participant = h('input', {
    id: 'filter-participant', type: 'text', placeholder: 'participant name', autocomplete: 'off', spellcheck: 'false',
  });
  const olderThan = h('select', { id: 'filter-age' }, AGES.map(([value, text]) => h('option', { value }, text)));
  const controls = { status, protocol, participant, olderThan };

  const form = h('form', { id: 'filters', class: 'filters' },
    h('label', {}, 'status ', status), h('label', {}, 'protocol ', protocol),
    h('label', {}, 'participant ', participant), h('label', {}, 'age ', olderThan),
    h('button', { type: 'submit' }, 'apply'));
  // Any change applies at once, through the hash, so the URL always says what is shown.
  const apply = (event) => {
    if (event) event.preventDefault();
    const query = new URLSearchParams();
    for (const key of FILTERS) {
      const value = controls[key].value.trim();
      if (value) query.set(key, value);
    }
    const hash = '#/transactions' + (query.toString() ? `?${query}` : '');
    if (location.hash !== hash) location.hash = hash; else route();
  };
  form.addEventListener('change', apply);
  form.addEventListener('submit', apply);

  const rowCount = h('p', { id: 'row-count', class: 'muted' }, 'loading…');
  const body = h('tbody');
  const more = h('button', { id: 'more', type: 'button', hidden: true }, 'more');
  // One request at a time: a refresh answer must not replace rows "more" just added.
  let queue = Promise.resolve();
  const serial = (work) => (queue = queue.then(work));
  more.addEventListener('click', () => serial(() => load('load', (current) => fetchRows('more', current))));
  $('page').replaceChildren(h('section', { class: 'list' }, h('h1', {}, 'Transactions'), form, rowCount,
    h('table', { id: 'transactions', class: 'grid' },
      h('thead', {}, h('tr', {}, ['gid', 'protocol', 'status', '', 'age', 'participants'].map((t) => h('th', {}, t)))),
      body),
    more));

  async function fetchRows(mode, current) {
    const query = new URLSearchParams(page.filters);
    // A refresh re-reads as many rows as are shown, so "more" pages are kept.
    query.set('limit', String(mode === 'refresh' ? Math.min(REFRESH_ROWS, Math.max(PAGE_SIZE, page.rows.length)) : PAGE_SIZE));
    if (mode === 'more') query.set('cursor', page.next);
    // Percent-encoding throughout: dtxd reads a '+' in a query as itself, not as a space.
    const encoded = [...query].map(([key, value]) => `${key}=${encodeURIComponent(value)}`).join('&');
    let answer;
    try {
      answer = await api('GET', `v1/transactions?${encoded}`);
    } catch (error) {
      // Rows of the previous filter would pass for this one's: show none.
      if (current() && mode === 'first') {
        page.rows = [];
        page.next = null;
        render('the list could not be loaded (see the error above)');
      }
      throw error;
    }
    if (!current()) return;
    page.rows = mode === 'more' ? page.rows.concat(answer.transactions) : answer.transactions;
    page.next = answer.nextCursor || null;
    render();
  }

  function render(failed) {
    body.replaceChildren(...(page.rows.length ? page.rows.map(row)
      : [h('tr', { class: 'empty' }, h('td', { colspan: 6 }, failed || 'no transactions'))]));
    const n = page.rows.length;
    rowCount.textContent = failed ? '' : `${n} transaction${n === 1 ? '' : 's'} shown${page.next ? ' (more below)' : ''}`
      + (n > REFRESH_ROWS ? `; not refreshed by itself beyond ${REFRESH_ROWS} rows` : '');
    more.hidden = !page.next;
  }

  const row = (t) => h('tr', { 'data-gid': t.gid, class: t.stuck ? 'stuck' : undefined },
    h('td', { class: 'gid' }, h('a', { href: txHref(t.gid) }, t.gid)),
    h('td', {}, t.protocol),
    h('td', { class: 'status', 'data-status': t.status }, t.status),
    h('td', { class: 'flags' }, t.stuck && badge('stuck-badge', 'stuck', 'needs an operator: open it to see why'),
      t.heuristic && badge('heuristic', 'heuristic', 'an outcome was forced against the decision')),
    h('td', { class: 'age', title: when(t.createdAt) }, age(t.createdAt)),
    h('td', {}, t.participants.join(', ')));

  page.show = (params) => {
    page.filters = new URLSearchParams();
    for (const key of FILTERS) {
      const value = params.get(key) || '';
      if (value) page.filters.set(key, value);
      const control = controls[key];
      // An age not in the menu (typed into the URL) gets its own entry.
      if (control === olderThan && value && ![...olderThan.options].some((o) => o.value === value)) {
        olderThan.append(h('option', { value }, `older than ${value} s`));
      }
      if (document.activeElement !== control) control.value = value;
    }
    page.rows = [];
    serial(() => load('load', (current) => fetchRows('first', current)));
  };
  // A refresh re-reads the rows shown, which the API gives 1000 at a time at most.
  page.refresh = () => (page.rows.length > REFRESH_ROWS ? null : serial(() => load('refresh', (current) => fetchRows('refresh', current))));
  page.show(target.params);
  return page;
}

// ---- One transaction ----------------------------------------------------------------

function transactionPage(target) {
  const gid = target.gid;
  const path = `v1/transactions/${encodeURIComponent(gid)}`;
  const page = { kind: 'transaction', gid, json: null, view: null, form: null, timelineOpen: false };
  $('page').replaceChildren(h('p', { class: 'muted' }, `loading ${gid}…`));

  // Re-render only when the answer changed, so scrolling and open sections stay put.
  page.display = (t, force) => {
    const json = JSON.stringify(t);
    if (!force && json === page.json) return;
    page.json = json;
    page.view = t;
    page.form = null;
    const scrolled = document.querySelector('.diagram-wrap');
    const left = scrolled ? scrolled.scrollLeft : 0;
    $('page').replaceChildren(renderTransaction(t, page));
    document.querySelector('.diagram-wrap').scrollLeft = left; // a wide diagram stays where it was scrolled
  };
  const fetchView = async (current) => {
    const t = await api('GET', path);
    if (current()) page.display(t, false);
  };
  // While an action form is open the page stands still.
  page.refresh = () => (page.form ? null : load('refresh', fetchView));
  load('load', async (current) => {
    try {
      await fetchView(current);
    } catch (error) {
      if (current() && error.status !== 401) {
        $('page').replaceChildren(h('p', {}, h('a', { href: '#/' }, '← transactions')),
          h('p', { class: 'muted' }, `transaction ${gid} cannot be shown.`));
      }
      throw error;
    }
  });
  return page;
}

function renderTransaction(t, page) {
  const finished = (t.status === 'committed' || t.status === 'aborted') && !t.stuck;
  const interactiveOpen = t.interactive && t.status === 'active';
  const fact = (name, ...value) => [h('dt', {}, name), h('dd', {}, value)];

  const actions = h('div', { class: 'actions' });
  if (!finished) {
    if (t.stuck || t.branches.some((b) => b.nextRetryAt)) {
      actions.append(h('button', { id: 'action-retry', type: 'button', onclick: () => openAction(page, { kind: 'retry' }) },
        'retry now'));
    }
    actions.append(
      h('button', { id: 'action-commit', type: 'button', onclick: () => openAction(page, { kind: 'commit' }) },
        interactiveOpen ? 'commit' : 'force commit'),
      h('button', { id: 'action-abort', type: 'button', class: 'danger', onclick: () => openAction(page, { kind: 'abort' }) },
        interactiveOpen ? 'abort' : 'force abort'));
  }

  // A message's branch, once submitted, only as committed (its effect applied by hand).
  const canResolve = (b) => !BRANCH_DONE.has(b.state) && (RESOLVABLE.has(t.protocol) && PHASE_TWO.has(t.status)
    || t.protocol === 'msg' && (t.status === 'running' || t.status === 'failed'));
  const branchRows = t.branches.map((b) => h('tr', { 'data-branch': b.id },
    h('td', { class: 'num' }, b.id),
    h('td', {}, b.participant),
    h('td', {}, b.operation),
    h('td', {}, h('span', { class: 'state', 'data-state': b.state }, b.state)),
    h('td', { class: 'num' }, b.attempts),
    h('td', { class: 'last-error' }, b.lastError || ''),
    h('td', { title: b.nextRetryAt ? when(b.nextRetryAt) : undefined },
      b.nextRetryAt ? `in ${duration((Date.parse(b.nextRetryAt) - Date.now()) / 1000)}` : ''),
    h('td', { class: 'json' }, b.result === undefined ? '' : h('code', { title: JSON.stringify(b.result, null, 2) },
      clip(JSON.stringify(b.result), 80))),
    h('td', {}, canResolve(b) && h('button', {
      id: `action-resolve-${b.id}`, type: 'button', class: 'small',
      onclick: () => openAction(page, { kind: 'resolve', branch: b }),
    }, 'resolve…'))));

  const auditRows = (t.audit || []).map((a) => h('tr', {},
    h('td', { class: 'when' }, when(a.at)), h('td', {}, a.who), h('td', {}, a.action),
    h('td', { class: 'num' }, a.branch === undefined ? '' : `#${a.branch}`), h('td', {}, a.reason)));

  const timeline = h('details', { class: 'timeline', open: page.timelineOpen },
    h('summary', {}, `timeline (${t.timeline.length} events)`),
    table('timeline', ['when', 'event', 'branch', 'detail'], t.timeline.map((e) => h('tr', {},
      h('td', { class: 'when' }, when(e.at)), h('td', {}, e.event),
      h('td', { class: 'num' }, e.branch === undefined ? '' : `#${e.branch}`), h('td', {}, e.detail || ''))), 'no events'));
  timeline.addEventListener('toggle', () => { page.timelineOpen = timeline.open; });

  return h('section', { id: 'transaction', 'data-status': t.status, 'data-stuck': String(t.stuck) },
    h('p', { class: 'crumbs' }, h('a', { href: '#/' }, 'Transactions'), ' / ', t.gid),
    h('h1', { class: 'gid' }, t.gid, ' ', statusWord(t.status),
      t.stuck && badge('stuck-badge', 'stuck'), t.heuristic && badge('heuristic', 'heuristic')),
    h('dl', { class: 'facts' },
      fact('protocol', t.protocol + (t.interactive ? ' (interactive)' : '')),
      t.service && fact('service', `${t.service} (checked back with)`),
      fact('decision', t.decision || 'none yet'),
      fact('created', `${when(t.createdAt)} (${age(t.createdAt)} ago)`),
      fact('updated', `${when(t.updatedAt)} (${age(t.updatedAt)} ago)`),
      fact('timeout', `${t.timeout} s`)),
    t.stuck && h('p', { class: 'stuck-line' }, h('strong', {}, 'stuck: '),
      h('span', { id: 'stuck-reason' }, t.stuckReason || 'dtxd gave no reason')),
    t.error && h('p', { class: 'txn-error' }, h('strong', {}, 'error: '), t.error),
    actions,
    h('div', { id: 'action-area' }),
    h('h2', {}, 'Branches'),
    table('branches', ['#', 'participant', 'operation', 'state', 'attempts', 'last error', 'next retry', 'result', ''],
      branchRows, 'no branches yet'),
    h('h2', {}, 'Sequence'),
    h('div', { class: 'diagram-wrap' }, drawDiagram(t)),
    legend(),
    h('h2', {}, 'Operator actions'),
    table('audit', ['when', 'who', 'action', 'branch', 'reason'], auditRows, 'no operator actions'),
    timeline);
}

// What each action posts, and how its form explains it.
function describeAction(t, action) {
  const base = `v1/transactions/${encodeURIComponent(t.gid)}`;
  const interactiveOpen = t.interactive && t.status === 'active';
  switch (action.kind) {
    case 'retry':
      return { title: `Retry ${t.gid} now`, verb: 'retry now', path: `${base}/retry`,
        hint: 'Sends every pending delivery now instead of at its backoff.' };
    case 'commit':
    case 'abort':
      return {
        title: `${interactiveOpen ? '' : 'Force '}${action.kind} ${t.gid}`,
        verb: interactiveOpen ? action.kind : `force ${action.kind}`,
        path: `${base}/${action.kind}`,
        hint: interactiveOpen
          ? `The application's ${action.kind} of this open interactive transaction.`
          : `Forces the outcome. If it goes against a logged decision the transaction becomes heuristic.`,
      };
    default: {
      const b = action.branch;
      return { title: `Resolve branch #${b.id} (${b.participant}) by hand`, verb: 'resolve', outcome: true,
        path: `${base}/branches/${b.id}/resolve`,
        hint: `Declares how the branch ended after you settled it outside dtx; dtxd sends it nothing more.` };
    }
  }
}

function openAction(page, action) {
  const t = page.view;
  const spec = describeAction(t, action);
  page.form = action; // stops the refresh until the form closes
  const reason = h('input', { id: 'action-reason', type: 'text', maxlength: 1000, autocomplete: 'off',
    placeholder: 'why (required; kept in the audit)', required: true });
  const submit = h('button', { id: 'action-submit', type: 'submit', class: 'primary', disabled: true }, spec.verb);
  const outcome = spec.outcome && h('select', { id: 'action-outcome' },
    h('option', { value: 'committed' }, 'committed'), t.protocol !== 'msg' && h('option', { value: 'aborted' }, 'aborted'));
  if (outcome) outcome.value = t.decision === 'abort' ? 'aborted' : 'committed';
  const close = () => {
    page.form = null;
    $('action-area').replaceChildren();
  };
  const form = h('form', { id: 'action-form', class: 'action-form' },
    h('h3', {}, spec.title), h('p', { class: 'muted' }, spec.hint),
    outcome && h('label', {}, 'outcome ', outcome),
    h('label', { class: 'reason' }, 'reason ', reason),
    h('div', { class: 'buttons' }, submit,
      h('button', { id: 'action-cancel', type: 'button', onclick: close }, 'cancel')));
  // dtxd refuses a reason of only spaces; so does the button.
  reason.addEventListener('input', () => { submit.disabled = !reason.value.trim(); });
  form.addEventListener('keydown', (event) => { if (event.key === 'Escape') close(); });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!reason.value.trim()) return;
    const body = { reason: reason.value.trim() };
    const operator = operatorInput.value.trim();
    if (operator) body.operator = operator;
    if (outcome) body.outcome = outcome.value;
    submit.disabled = true;
    clearError();
    load('action', async (current) => {
      try {
        const answer = await api('POST', spec.path, body);
        if (current()) page.display(answer, true);
        refreshCounts();
      } finally {
        submit.disabled = !reason.value.trim();
      }
    });
  });
  $('action-area').replaceChildren(form);
  reason.focus();
}

// ---- The sequence diagram ------------------------------------------------------------

/** What a timeline entry draws as (the vocabulary is in the yaml's TimelineEntry.event). */
function classify(entry) {
  const hasBranch = entry.branch !== undefined;
  let m;
  if (hasBranch && (m = /^([a-z0-9_]+) sent$/.exec(entry.event))) return { kind: 'message', word: m[1] };
  if (hasBranch && (m = /^([a-z0-9_]+): (.+)$/.exec(entry.event))) {
    return { kind: 'answer', word: m[2], message: m[1], failed: FAILED_ANSWERS.has(m[2]) };
  }
  if (!hasBranch && (m = /^logged (.+?)( \(forced\))?$/.exec(entry.event))) {
    return { kind: 'log', word: entry.event, forced: !!m[2] };
  }
  return { kind: 'note', word: entry.event };
}

const CHAR = 7;         // a rough width of one character of the 12px labels
const ROW = 34;         // vertical space per timeline entry
const HEAD_H = 28;      // lane header box height
const LEFT = 78;        // room for the time offsets (whole seconds)

function drawDiagram(t) {
  // Lanes: the coordinator, then each participant in branch order (shared lanes for shared participants).
  const lanes = ['coordinator'];
  const laneOfBranch = new Map();
  for (const b of t.branches) {
    let index = lanes.indexOf(b.participant, 1);
    if (index < 0) index = lanes.push(b.participant) - 1;
    laneOfBranch.set(b.id, index);
  }
  const entries = t.timeline.map((e) => ({ ...e, ...classify(e), lane: laneOfBranch.get(e.branch) }));
  const arrowLabel = (e) => `${e.word} #${e.branch}`;
  const noteLabel = (e) => e.word + (e.detail ? ` — ${clip(e.detail, 60)}` : '');

  // Lanes are as far apart as the widest arrow label or lane name needs.
  const widest = Math.max(0, ...entries.filter((e) => e.lane !== undefined && (e.kind === 'message' || e.kind === 'answer'))
    .map((e) => arrowLabel(e).length * CHAR));
  const gap = Math.max(150, widest + 40, ...lanes.map((name) => name.length * CHAR + 36));
  const x0 = LEFT + Math.max(60, lanes[0].length * CHAR / 2 + 16);
  const laneX = (i) => x0 + i * gap;
  const top = 8;
  const rowY = (i) => top + HEAD_H + 26 + i * ROW;
  const bottom = rowY(Math.max(entries.length, 1)) - 6;
  let right = laneX(lanes.length - 1) + gap / 2;

  const parts = [];
  lanes.forEach((name, i) => {
    const w = name.length * CHAR + 20;
    parts.push(svg('line', { class: 'lifeline', x1: laneX(i), y1: top + HEAD_H, x2: laneX(i), y2: bottom }),
      svg('g', { class: 'lane-head' },
        svg('rect', { x: laneX(i) - w / 2, y: top, width: w, height: HEAD_H, rx: 4 }),
        svg('text', { x: laneX(i), y: top + HEAD_H / 2 + 4, 'text-anchor': 'middle' }, name)));
  });

  const first = entries.length ? Date.parse(entries[0].at) : 0;
  entries.forEach((e, i) => {
    const y = rowY(i);
    const title = svg('title', {}, `${when(e.at)}  ${e.event}${e.branch === undefined ? '' : ` (branch #${e.branch})`}`
      + (e.detail ? `\n${e.detail}` : ''));
    parts.push(svg('text', { class: 'offset', x: LEFT - 10, y: y + 4, 'text-anchor': 'end' },
      `+${Math.max(0, Math.round((Date.parse(e.at) - first) / 1000))} s`));
    const lane = e.lane === undefined ? 0 : e.lane;
    if ((e.kind === 'message' || e.kind === 'answer') && e.lane !== undefined) {
      const [from, to] = e.kind === 'message' ? [laneX(0), laneX(lane)] : [laneX(lane), laneX(0)];
      const variant = e.kind === 'message' ? 'message' : e.failed ? 'answer failed' : 'answer ok';
      const dir = Math.sign(to - from);
      parts.push(svg('g', { class: `arrow ${variant}` },
        svg('line', { x1: from + dir * 3, y1: y, x2: to - dir * 4, y2: y,
          'marker-end': `url(#head-${e.kind === 'message' ? 'message' : e.failed ? 'failed' : 'ok'})` }),
        svg('text', { x: (from + to) / 2, y: y - 6, 'text-anchor': 'middle' }, arrowLabel(e)),
        title));
    } else if (e.kind === 'log') {
      const x = laneX(0);
      right = Math.max(right, x + 14 + e.word.length * CHAR);
      parts.push(svg('g', { class: e.forced ? 'forced-log' : 'log' },
        svg('rect', { x: x - 5, y: y - 5, width: 10, height: 10 }),
        svg('text', { x: x + 12, y: y + 4 }, e.word), title));
    } else {
      // A note beside its lane, on a light background so lifelines do not cross the text.
      const x = laneX(lane) + 10;
      const text = noteLabel(e);
      const w = text.length * CHAR + 12;
      right = Math.max(right, x + w + 8);
      parts.push(svg('g', { class: 'note' },
        svg('rect', { x, y: y - 11, width: w, height: 20, rx: 3 }),
        svg('text', { x: x + 6, y: y + 4 }, text), title));
    }
  });
  if (!entries.length) parts.push(svg('text', { class: 'note-empty', x: laneX(0) + 10, y: rowY(0) + 4 }, 'no events yet'));

  const marker = (id) => svg('marker', { id: `head-${id}`, class: `head-${id}`, viewBox: '0 0 10 10', refX: 9, refY: 5,
    markerWidth: 8, markerHeight: 8, orient: 'auto-start-reverse' }, svg('path', { d: 'M0,0 L10,5 L0,10 z' }));
  const width = Math.ceil(right + 10);
  const height = bottom + 10;
  return svg('svg', { id: 'diagram', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': `sequence diagram of ${t.gid}` },
  svg('defs', {}, marker('message'), marker('ok'), marker('failed')), parts);
}

function legend() {
  const item = (cls, text) => h('span', { class: 'legend-item' }, h('span', { class: `swatch ${cls}` }), text);
  return h('p', { class: 'legend' },
    item('message', 'message sent by dtxd'), item('ok', 'answer'),
    item('failed', 'refused, failed or not delivered'), item('forced', 'forced write to dtxd\'s log'),
    item('note', 'event'), h('span', { class: 'muted' }, 'hover an arrow for details; times are whole seconds from the first event (as the API keeps them)'));
}

// ---- Participants ---------------------------------------------------------------------

function participantsPage() {
  const page = { kind: 'participants' };
  const holder = h('div', {}, h('p', { class: 'muted' }, 'loading…'));
  $('page').replaceChildren(h('section', {}, h('h1', {}, 'Participants'), holder));
  const fetchList = async (current) => {
    const answer = await api('GET', 'v1/participants');
    if (!current()) return;
    const withBranches = answer.participants.some((p) => p.unfinishedBranches !== undefined);
    const headings = ['name', 'url', 'protocols', 'last seen', 'registered'];
    if (withBranches) headings.push('unfinished branches');
    holder.replaceChildren(table('participants', headings, answer.participants.map((p) => h('tr', { 'data-name': p.name },
      h('td', { class: 'name' }, p.name, p.hasToken && badge('token', 'token', 'dtxd sends it a bearer token'),
        p.batch && badge('batch', 'batch', 'accepts batched messages')),
      h('td', { class: 'url' }, p.url),
      h('td', {}, (p.protocols || []).join(', ')),
      h('td', { title: when(p.lastSeen) }, p.lastSeen ? `${age(p.lastSeen)} ago` : 'not since dtxd started'),
      h('td', { class: 'when' }, when(p.registeredAt)),
      withBranches && h('td', { class: 'num' }, p.unfinishedBranches === undefined ? '' : p.unfinishedBranches))),
    'no participants registered'));
  };
  page.refresh = () => load('refresh', fetchList);
  load('load', fetchList);
  return page;
}

function unknownPage(target) {
  $('page').replaceChildren(h('p', {}, `There is no page "${target.path}". `, h('a', { href: '#/' }, 'See the transactions.')));
  return { kind: 'unknown' };
}

// ---- Start ----------------------------------------------------------------------------

auth.token = auth.token; // shows "sign out" when a token is kept
window.addEventListener('hashchange', route);
route();
refreshCounts();
setInterval(tick, REFRESH_MS);
