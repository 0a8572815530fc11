/*
 * ccgate admin UI: a single page over the admin API (docs/api.md, "Admin
 * API").  No framework and no external asset: views are functions that
 * fetch and render, charts are SVG drawn here.  Every value from the
 * server is escaped before it reaches innerHTML.
 */
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const esc = (v) => String(v ?? '').replace(/[&<>"']/g,
  (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const fmt = new Intl.NumberFormat('en-US');
const num = (v) => (v === null || v === undefined ? '—' : fmt.format(v));
const money = (v) => '$' + (Number(v) || 0).toFixed(4);
const when = (t) => (t ? t.replace('T', ' ').replace(/\.\d+Z$|Z$/, '') : '—');

const state = { token: sessionStorage.getItem('ccgate-token'), me: null, timer: null };

/* --- the API ---------------------------------------------------------- */

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + state.token };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers,
    body: body === undefined ? undefined : JSON.stringify(body) });
  const j = await r.json().catch(() => ({}));
  if (r.status === 401) { signOut('Your session has ended: sign in again.'); }
  if (!r.ok) throw new ApiError(r.status, (j.error && j.error.message) || r.statusText);
  return j;
}

/* --- shell ------------------------------------------------------------ */

function flash(msg, bad) {
  const f = $('#flash');
  f.textContent = msg;
  f.className = 'flash' + (bad ? ' bad' : '');
  f.hidden = false;
  clearTimeout(flash.t);
  flash.t = setTimeout(() => { f.hidden = true; }, 6000);
}

function signOut(msg) {
  state.token = null;
  sessionStorage.removeItem('ccgate-token');
  clearInterval(state.timer);
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = msg || '';
}

async function signIn(ev) {
  ev.preventDefault();
  const f = ev.target;
  $('#login-error').textContent = '';
  const r = await fetch('/admin/login', { method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: f.username.value, password: f.password.value }) });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) {
    $('#login-error').textContent = (j.error && j.error.message) || 'sign-in failed';
    return;
  }
  state.token = j.token;
  sessionStorage.setItem('ccgate-token', j.token);
  f.password.value = '';
  start();
}

async function start() {
  try {
    state.me = await api('GET', '/admin/me');
  } catch (e) {
    if (e.status !== 401) signOut(e.message);
    return;
  }
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#whoami').textContent = 'Signed in as ' + state.me.username;
  route();
}

const views = {};

function route() {
  if (!state.token) return signOut();
  const [name, arg] = location.hash.replace(/^#\//, '').split('?')[0].split('/');
  const view = views[name] ? name : 'dashboard';
  clearInterval(state.timer);
  $$('.side a').forEach((a) => a.classList.toggle('active', a.dataset.view === view));
  $('#actions').innerHTML = '';
  $('#view').innerHTML = '<p class="muted">Loading…</p>';
  views[view](arg ? decodeURIComponent(arg) : undefined).catch((e) => {
    $('#view').innerHTML = '<div class="card error">' + esc(e.message) + '</div>';
  });
}

function title(t) { $('#title').textContent = t; document.title = t + ' · ccgate admin'; }

function action(label, cls, fn) {
  const b = document.createElement('button');
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener('click', fn);
  $('#actions').appendChild(b);
  return b;
}

/* --- dialogs ---------------------------------------------------------- */

function dialog(html, onSubmit) {
  const d = $('#dialog');
  const f = $('#dialog-form');
  f.innerHTML = html;
  return new Promise((resolve) => {
    const submit = async (ev) => {
      if (ev.submitter && ev.submitter.value === 'cancel') return;
      ev.preventDefault();
      const err = $('.error', f);
      try {
        const out = onSubmit ? await onSubmit(f) : true;
        f.removeEventListener('submit', submit);
        d.close();
        resolve(out);
      } catch (e) {
        if (err) err.textContent = e.message; else flash(e.message, true);
      }
    };
    f.addEventListener('submit', submit);
    d.addEventListener('close', () => { f.removeEventListener('submit', submit); resolve(null); },
      { once: true });
    d.showModal();
  });
}

function confirmDialog(heading, text, verb, danger) {
  return dialog('<h2>' + esc(heading) + '</h2><p>' + text + '</p>' +
    '<div class="dialog-actions"><button value="cancel" formnovalidate>Cancel</button>' +
    '<button class="' + (danger ? 'primary danger' : 'primary') + '" value="ok">' +
    esc(verb) + '</button></div>');
}

function showSecret(heading, key, signing) {
  return dialog('<h2>' + esc(heading) + '</h2>' +
    '<div class="warn-box">This is the only time the ' + (key ? 'key' : 'signing secret') +
    (key && signing ? ' and its signing secret are' : ' is') + ' shown. Copy it now and keep it safe.</div>' +
    (key ? '<div class="secret"><code id="new-secret">' + esc(key) + '</code>' +
    '<button type="button" id="copy-secret" data-copy="new-secret">Copy</button></div>' : '') +
    (signing ? '<p>Signing secret (X-Ccgate-Signature)</p><div class="secret"><code id="new-signing-secret">' +
    esc(signing) + '</code><button type="button" id="copy-signing-secret" data-copy="new-signing-secret">Copy</button></div>' : '') +
    '<div class="dialog-actions"><button class="primary" value="ok">Done</button></div>')
    .then(() => undefined, () => undefined)
    .finally(() => {});
}

document.addEventListener('click', (ev) => {
  if (ev.target.id !== 'copy-secret' && ev.target.id !== 'copy-signing-secret') return;
  const code = $('#' + ev.target.dataset.copy);
  const text = code.textContent;
  (navigator.clipboard ? navigator.clipboard.writeText(text) : Promise.reject())
    .then(() => { ev.target.textContent = 'Copied'; },
      () => { const r = document.createRange(); r.selectNodeContents(code);
        getSelection().removeAllRanges(); getSelection().addRange(r); ev.target.textContent = 'Selected'; });
});

/* --- charts ----------------------------------------------------------- */

/* A bar or line chart of points [{x: label, y: number}] as SVG. */
function chart(points, opts = {}) {
  const W = 600, H = 180, L = 44, B = 22, T = 8, R = 8;
  const max = Math.max(1, ...points.map((p) => p.y || 0));
  const n = Math.max(points.length, 1);
  const step = (W - L - R) / n;
  const y = (v) => T + (H - T - B) * (1 - (v || 0) / max);
  let g = '<line class="axis" x1="' + L + '" y1="' + (H - B) + '" x2="' + (W - R) + '" y2="' + (H - B) + '"/>';
  for (const f of max >= 2 ? [0, 0.5, 1] : [0, 1]) {
    g += '<text x="' + (L - 6) + '" y="' + (y(max * f) + 3) + '" text-anchor="end">' +
      esc(opts.unit === 'ms' ? Math.round(max * f) : fmt.format(Math.round(max * f))) + '</text>';
  }
  const every = Math.ceil(n / 6);
  points.forEach((p, i) => {
    if (i % every === 0) {
      g += '<text x="' + (L + step * i + step / 2) + '" y="' + (H - 6) + '" text-anchor="middle">' +
        esc(p.x) + '</text>';
    }
  });
  if (opts.line) {
    const pts = points.map((p, i) => (L + step * i + step / 2).toFixed(1) + ',' + y(p.y).toFixed(1));
    if (pts.length) {
      g += '<polygon class="area" points="' + (L + step / 2) + ',' + (H - B) + ' ' + pts.join(' ') +
        ' ' + (L + step * (n - 1) + step / 2) + ',' + (H - B) + '"/>';
      g += '<polyline class="line" points="' + pts.join(' ') + '"/>';
    }
  } else {
    points.forEach((p, i) => {
      const h = (H - T - B) * (p.y || 0) / max;
      g += '<rect class="bar' + (opts.bad ? ' bad' : '') + '" x="' + (L + step * i + step * 0.15).toFixed(1) +
        '" y="' + (H - B - h).toFixed(1) + '" width="' + (step * 0.7).toFixed(1) + '" height="' + h.toFixed(1) +
        '" data-y="' + (p.y || 0) + '"><title>' + esc(p.x + ': ' + (p.y || 0)) + '</title></rect>';
    });
  }
  return '<svg viewBox="0 0 ' + W + ' ' + H + '" preserveAspectRatio="none" role="img">' + g + '</svg>';
}

function chartCard(name, heading, sub, svg) {
  return '<div class="card chart" data-chart="' + esc(name) + '"><div class="chart-head"><h2>' +
    esc(heading) + '</h2><span class="muted">' + esc(sub) + '</span></div>' + svg + '</div>';
}

/* Usage rows (per key and period) summed per period, over every period. */
function byPeriod(rows, periods) {
  const m = new Map(periods.map((p) => [p, { requests: 0, errors: 0, tokens: 0, cost: 0, p95: 0 }]));
  for (const r of rows) {
    const s = m.get(r.period);
    if (!s) continue;
    s.requests += r.requests; s.errors += r.errors; s.tokens += r.total_tokens;
    s.cost += r.cost_usd; s.p95 = Math.max(s.p95, r.latency_ms.p95 || 0);
  }
  return periods.map((p) => ({ period: p, ...m.get(p) }));
}

function lastHours(n) {
  const out = [];
  const now = new Date();
  now.setUTCMinutes(0, 0, 0);
  for (let i = n - 1; i >= 0; i--) {
    out.push(new Date(now.getTime() - i * 3600e3).toISOString().replace(/\.\d+Z$/, 'Z'));
  }
  return out;
}

function lastDays(n) {
  const out = [];
  const now = Date.now();
  for (let i = n - 1; i >= 0; i--) out.push(new Date(now - i * 86400e3).toISOString().slice(0, 10));
  return out;
}

/* --- views ------------------------------------------------------------ */

views.dashboard = async () => {
  title('Dashboard');
  const hours = lastHours(24);
  const [usage, pool] = await Promise.all([
    api('GET', '/admin/usage?group=hour&from=' + hours[0]),
    api('GET', '/admin/pool').catch(() => null)]);
  const s = byPeriod(usage.usage, hours);
  const tot = s.reduce((a, b) => ({ requests: a.requests + b.requests, errors: a.errors + b.errors,
    tokens: a.tokens + b.tokens, cost: a.cost + b.cost, p95: Math.max(a.p95, b.p95) }),
  { requests: 0, errors: 0, tokens: 0, cost: 0, p95: 0 });
  const label = (p) => p.slice(11, 16);
  $('#view').innerHTML =
    '<div id="upstream-banner" hidden></div>' +
    '<div class="grid kpis">' +
    kpi('Requests', num(tot.requests), 'last 24 hours', 'requests') +
    kpi('Tokens', num(tot.tokens), money(tot.cost) + ' reported cost', 'tokens') +
    kpi('Errors', num(tot.errors), tot.requests ? (100 * tot.errors / tot.requests).toFixed(1) +
      '% of requests' : 'no requests', 'errors') +
    kpi('Latency p95', tot.p95 ? num(tot.p95) + ' ms' : '—', 'worst hour, worst key', 'latency') +
    '<div id="pool-kpi"></div></div>' +
    '<div class="grid charts">' +
    chartCard('requests', 'Requests per hour', 'UTC', chart(s.map((p) => ({ x: label(p.period), y: p.requests })))) +
    chartCard('tokens', 'Tokens per hour', 'input + output', chart(s.map((p) => ({ x: label(p.period), y: p.tokens })), { line: true })) +
    chartCard('errors', 'Errors per hour', 'status 400 and above', chart(s.map((p) => ({ x: label(p.period), y: p.errors })), { bad: true })) +
    chartCard('latency', 'Latency p95 per hour', 'ms', chart(s.map((p) => ({ x: label(p.period), y: p.p95 })), { line: true, unit: 'ms' })) +
    '</div>';
  const drawPool = (p) => {
    const k = $('#pool-kpi');
    if (!k) return;
    drawUpstream(p && p.pool.upstream);
    if (!p) { k.outerHTML = kpi('CLI pool', 'down', 'ccgate-poold does not answer', 'pool'); return; }
    const by = p.pool.processes_by_state;
    k.innerHTML = '';
    k.outerHTML = '<div id="pool-kpi" class="card kpi" data-kpi="pool"><div class="label">CLI pool</div>' +
      '<div class="value">' + num(by.busy) + ' / ' + num(p.pool.limits.max_instances) + '</div>' +
      '<div class="sub">busy · ' + num(by.warm) + ' warm · ' + num(p.pool.queue_length) + ' queued</div></div>';
  };
  drawPool(pool);
  state.timer = setInterval(() => api('GET', '/admin/pool').then(drawPool, () => drawPool(null)), 5000);
};

/*
 * The upstream account's state (ccgate-poold's, docs/operators.md): a
 * banner with what it means and what to do, hidden while it is ok.
 */
const UPSTREAM_HELP = {
  limited: (u) => ['The upstream account is limited',
    (u.reset ? 'Its plan\'s usage limit resets at ' + when(new Date(u.reset * 1000).toISOString()) + ' UTC. ' :
      'The upstream is rate-limiting the account. ') +
    'Turns are refused at once with 429 and Retry-After until then; ccgate-poold checks the account itself ' +
    'when the wait passes. Nothing to do but wait, or raise the plan\'s limit and press Apply on the Pool page ' +
    'to check now.'],
  overloaded: () => ['The upstream is overloaded',
    'It answered 529. Turns are refused with 503 for a short cool-down, then ccgate-poold checks it again. ' +
    'Nothing to do unless it lasts: see status.anthropic.com.'],
  credential_rejected: () => ['The upstream rejected the service\'s credential',
    'Every turn is refused with 503 until an operator renews it. For a subscription\'s OAuth token: run ' +
    '`claude setup-token`, put the token in /etc/ccgate/egress-credential.conf as docs/install.md (section 5) ' +
    'says, reload nginx, then press Apply on the Pool page to check at once (it is also checked every ' +
    'upstream_probe_interval_ms). For an API key: install a new key the same way.'],
};

function drawUpstream(u) {
  const b = $('#upstream-banner');
  if (!b) return;
  const help = u && UPSTREAM_HELP[u.state];
  if (!help) { b.hidden = true; b.innerHTML = ''; return; }
  const [head, text] = help(u);
  b.className = 'card banner bad';
  b.setAttribute('role', 'alert');
  b.dataset.state = u.state;
  b.innerHTML = '<strong>' + esc(head) + '</strong><p>' + esc(text) + '</p>' +
    '<div class="sub muted">since ' + esc(u.since ? when(new Date(u.since * 1000).toISOString()) : '—') +
    ' UTC · next check in ' + esc(num(u.retry_after)) + ' s · ' + esc(num(u.refused)) + ' turns refused</div>';
  b.hidden = false;
}

function kpi(label, value, sub, name) {
  return '<div class="card kpi" data-kpi="' + esc(name) + '"><div class="label">' + esc(label) +
    '</div><div class="value">' + esc(value) + '</div><div class="sub">' + esc(sub) + '</div></div>';
}

function limitText(k) {
  const u = k.usage_limit;
  const parts = [];
  if (u.requests_per_minute !== null) parts.push(num(u.requests_per_minute) + '/min');
  if (u.requests_per_day !== null) parts.push(num(u.requests_per_day) + '/day');
  if (u.tokens_per_day !== null) parts.push(num(u.tokens_per_day) + ' tok/day');
  if (u.max_concurrent_requests !== null && u.max_concurrent_requests !== undefined) {
    parts.push(num(u.max_concurrent_requests) + ' at once' + (u.queue === false ? ' (429 when busy)' : ''));
  }
  const text = parts.length ? parts.join(' · ') : 'unlimited';
  return k.require_signature ? text + ' · signed' : text;
}

views.keys = async () => {
  title('API keys');
  action('New key', 'primary', () => keyForm(null));
  const { keys, total } = await api('GET', '/admin/api-keys?limit=1000');
  $('#view').innerHTML = '<div class="card table-card"><table id="keys-table"><thead><tr>' +
    '<th>Name</th><th>Key</th><th>Tenant</th><th>Status</th><th>Limits</th><th>Last used</th><th></th>' +
    '</tr></thead><tbody>' + keys.map((k) => '<tr data-key="' + esc(k.id) + '">' +
      '<td><a href="#/key/' + esc(k.id) + '">' + esc(k.name) + '</a></td>' +
      '<td class="mono">' + esc(k.prefix) + '…</td><td>' + esc(k.tenant) + '</td>' +
      '<td><span class="badge ' + esc(k.status) + '">' + esc(k.status) + '</span></td>' +
      '<td>' + esc(limitText(k)) + '</td><td>' + esc(when(k.last_used_at)) + '</td>' +
      '<td><div class="row-actions">' + (k.status === 'revoked' ? '' :
        '<button data-act="edit">Edit</button>' +
        (k.status === 'suspended' ? '<button data-act="activate">Activate</button>'
          : '<button data-act="suspend">Suspend</button>') +
        '<button data-act="rotate">Rotate</button><button data-act="revoke" class="danger">Revoke</button>') +
      '</div></td></tr>').join('') + '</tbody></table>' +
    (keys.length ? '' : '<div class="empty">No keys yet. Create one with “New key”.</div>') + '</div>' +
    '<p class="muted">' + num(total) + (total === 1 ? ' key' : ' keys') + '</p>';
  $('#keys-table').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-act]');
    if (!b) return;
    const k = keys.find((x) => x.id === b.closest('tr').dataset.key);
    keyAction(b.dataset.act, k);
  });
};

async function keyAction(act, k) {
  try {
    if (act === 'edit') return keyForm(k);
    if (act === 'suspend' || act === 'activate') {
      await api('PUT', '/admin/api-keys/' + k.id, { status: act === 'suspend' ? 'suspended' : 'active' });
      flash('Key “' + k.name + '” ' + (act === 'suspend' ? 'suspended' : 'activated') + '.');
    } else if (act === 'rotate') {
      const out = await dialog('<h2>Rotate “' + esc(k.name) + '”</h2>' +
        '<p>A new secret replaces the old one. Clients using the old secret keep working for the grace period.</p>' +
        '<label>Grace period (seconds)<input name="grace" type="number" min="0" max="2592000" value="3600"></label>' +
        '<p class="error"></p><div class="dialog-actions"><button value="cancel" formnovalidate>Cancel</button>' +
        '<button class="primary" value="ok">Rotate</button></div>',
      (f) => api('POST', '/admin/api-keys/' + k.id + '/rotate', { grace_seconds: Number(f.grace.value) }));
      if (!out) return;
      await showSecret('New secret for “' + k.name + '”', out.key.key, out.key.signing_secret);
      flash('Key “' + k.name + '” rotated.');
    } else if (act === 'revoke') {
      if (!await confirmDialog('Revoke “' + k.name + '”?',
        'Clients using this key are refused from now on. A revoked key cannot be restored.', 'Revoke', true)) return;
      await api('DELETE', '/admin/api-keys/' + k.id);
      flash('Key “' + k.name + '” revoked.');
    }
  } catch (e) {
    flash(e.message, true);
  }
  route();
}

function limitValue(v) { return v === '' ? null : Number(v); }

async function keyForm(k) {
  const models = state.me.models;
  const allowed = k && k.permissions.models;
  const lim = k ? k.usage_limit : {};
  const perm = k ? k.permissions : { allow_streaming: true, allow_tools: false };
  const v = (x) => (x === null || x === undefined ? '' : esc(x));
  const html = '<h2>' + (k ? 'Edit “' + esc(k.name) + '”' : 'New API key') + '</h2><div class="form-grid">' +
    '<label class="wide">Name<input name="name" required maxlength="100" value="' + v(k && k.name) + '"></label>' +
    (k ? '' : '<label>User id (tenant)<input name="user_id" placeholder="optional" maxlength="64"></label>') +
    '<label>Project<input name="project" maxlength="200" value="' + v(k && k.metadata.project) + '"></label>' +
    '<label>Requests per minute<input name="rpm" type="number" min="0" placeholder="unlimited" value="' + v(lim.requests_per_minute) + '"></label>' +
    '<label>Requests per day<input name="rpd" type="number" min="0" placeholder="unlimited" value="' + v(lim.requests_per_day) + '"></label>' +
    '<label>Tokens per day<input name="tpd" type="number" min="0" placeholder="unlimited" value="' + v(lim.tokens_per_day) + '"></label>' +
    '<label>Max tokens per request<input name="max_tokens" type="number" min="0" placeholder="no cap" value="' + v(perm.max_tokens) + '"></label>' +
    '<label>Concurrent requests<input name="max_concurrent" type="number" min="1" max="10000" placeholder="unlimited" value="' + v(lim.max_concurrent_requests) + '"></label>' +
    '<label>Expires (UTC)<input name="expires" type="date" value="' + v(k && k.expires_at && k.expires_at.slice(0, 10)) + '"></label>' +
    '<fieldset class="wide"><legend>Models (none ticked: every model)</legend>' +
    models.map((m) => '<label class="check"><input type="checkbox" name="model" value="' + esc(m) + '"' +
      (allowed && allowed.includes(m) ? ' checked' : '') + '>' + esc(m) + '</label>').join('') + '</fieldset>' +
    '<label class="check"><input type="checkbox" name="streaming"' + (perm.allow_streaming ? ' checked' : '') + '>Allow streaming</label>' +
    '<label class="check"><input type="checkbox" name="tools"' + (perm.allow_tools ? ' checked' : '') + '>Allow tools</label>' +
    '<label class="check"><input type="checkbox" name="queue"' + (lim.queue === false ? '' : ' checked') +
    '>Queue when at the concurrency limit (else 429)</label>' +
    '<label class="check"><input type="checkbox" name="require_signature"' + (k && k.require_signature ? ' checked' : '') +
    '>Require signed requests</label>' +
    '</div><p class="error"></p><div class="dialog-actions"><button value="cancel" formnovalidate>Cancel</button>' +
    '<button class="primary" value="ok">' + (k ? 'Save' : 'Create key') + '</button></div>';
  const out = await dialog(html, (f) => {
    const ticked = $$('input[name=model]:checked', f).map((c) => c.value);
    const body = {
      name: f.name.value,
      expires_at: f.expires.value ? f.expires.value + 'T00:00:00Z' : null,
      usage_limit: { requests_per_minute: limitValue(f.rpm.value), requests_per_day: limitValue(f.rpd.value),
        tokens_per_day: limitValue(f.tpd.value), max_concurrent_requests: limitValue(f.max_concurrent.value),
        queue: f.queue.checked },
      require_signature: f.require_signature.checked,
      permissions: { models: ticked.length ? ticked : null, max_tokens: limitValue(f.max_tokens.value),
        allow_streaming: f.streaming.checked, allow_tools: f.tools.checked },
      metadata: Object.assign({}, k ? k.metadata : {}, f.project.value ? { project: f.project.value } : {}),
    };
    if (!f.project.value) delete body.metadata.project;
    if (!k && f.user_id.value) body.metadata.user_id = f.user_id.value;
    return k ? api('PUT', '/admin/api-keys/' + k.id, body) : api('POST', '/admin/api-keys', body);
  });
  if (!out) return;
  if (!k) await showSecret('Key “' + out.key.name + '” created', out.key.key, out.key.signing_secret);
  else if (out.key.signing_secret) await showSecret('Signing secret for “' + out.key.name + '”', null, out.key.signing_secret);
  flash(k ? 'Saved.' : 'Key “' + out.key.name + '” created.');
  route();
}

views.key = async (id) => {
  const days = lastDays(30);
  const [{ key: k }, usage] = await Promise.all([api('GET', '/admin/api-keys/' + encodeURIComponent(id)),
    api('GET', '/admin/usage?group=day&key_id=' + encodeURIComponent(id) + '&from=' + days[0])]);
  title('Key “' + k.name + '”');
  if (k.status !== 'revoked') action('Edit', '', () => keyForm(k));
  const s = byPeriod(usage.usage, days);
  $('#view').innerHTML = '<div class="grid kpis">' +
    kpi('Status', k.status, 'expires ' + when(k.expires_at), 'status') +
    kpi('Tenant', k.tenant, k.prefix + '…', 'tenant') +
    kpi('Limits', limitText(k), k.permissions.models ? k.permissions.models.join(', ') : 'every model', 'limits') +
    kpi('Last used', when(k.last_used_at), 'created ' + when(k.created_at), 'last') + '</div>' +
    '<div class="grid charts">' +
    chartCard('key-requests', 'Requests per day', 'last 30 days', chart(s.map((p) => ({ x: p.period.slice(5), y: p.requests })))) +
    chartCard('key-tokens', 'Tokens per day', 'last 30 days', chart(s.map((p) => ({ x: p.period.slice(5), y: p.tokens })), { line: true })) +
    '</div><h2 class="section">Usage history</h2><div class="card table-card"><table><thead><tr>' +
    '<th>Day</th><th class="num">Requests</th><th class="num">Errors</th><th class="num">Input</th>' +
    '<th class="num">Output</th><th class="num">Cost</th><th class="num">p50 ms</th><th class="num">p95 ms</th>' +
    '<th class="num">p99 ms</th></tr></thead><tbody>' + usage.usage.slice().reverse().map((u) => '<tr><td>' +
      esc(u.period) + '</td><td class="num">' + num(u.requests) + '</td><td class="num">' + num(u.errors) +
      '</td><td class="num">' + num(u.input_tokens) + '</td><td class="num">' + num(u.output_tokens) +
      '</td><td class="num">' + money(u.cost_usd) + '</td><td class="num">' + num(u.latency_ms.p50) +
      '</td><td class="num">' + num(u.latency_ms.p95) + '</td><td class="num">' + num(u.latency_ms.p99) +
      '</td></tr>').join('') + '</tbody></table>' +
    (usage.usage.length ? '' : '<div class="empty">No requests in the last 30 days.</div>') + '</div>';
};

async function logView(kind) {
  title(kind === 'errors' ? 'Errors' : 'Requests');
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  $('#view').innerHTML = '<form class="filters" id="log-filters">' +
    '<label>Key id<input name="key_id" maxlength="16" value="' + esc(params.get('key_id') || '') + '"></label>' +
    '<label>Status<input name="status" type="number" min="100" max="599" value="' + esc(params.get('status') || '') + '"></label>' +
    '<label>Route<input name="route" placeholder="/api/chat" value="' + esc(params.get('route') || '') + '"></label>' +
    '<label>Client request id<input name="client_request_id" maxlength="128" value="' +
    esc(params.get('client_request_id') || '') + '"></label>' +
    '<button class="primary">Filter</button></form>' +
    '<div class="card table-card"><table id="log-table"><thead><tr><th>Time (UTC)</th><th>Status</th>' +
    '<th>Method</th><th>Route</th><th>Key</th><th>Model</th><th class="num">Tokens in/out</th>' +
    '<th class="num">ms</th><th>Request id</th>' + (kind === 'errors' ? '<th>Error</th>' : '') +
    '</tr></thead><tbody></tbody></table><div class="more"><button id="more" hidden>Load more</button></div></div>';
  $('#log-filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const n of ['key_id', 'status', 'route', 'client_request_id']) if (ev.target[n].value) q.set(n, ev.target[n].value);
    location.hash = '#/' + kind + (q.toString() ? '?' + q : '');
  });
  let before = null;
  const load = async () => {
    const q = new URLSearchParams(params);
    q.set('limit', '50');
    if (before) q.set('before', before);
    const page = await api('GET', '/admin/' + kind + '?' + q);
    $('#log-table tbody').insertAdjacentHTML('beforeend', page.requests.map((r) => '<tr data-request="' +
      esc(r.request_id) + '"><td>' + esc(when(r.created_at)) + '</td><td><span class="badge ' +
      (r.status >= 400 ? 'bad' : 'ok') + '">' + esc(r.status) + '</span></td><td>' + esc(r.method) +
      '</td><td class="mono">' + esc(r.route) + '</td><td class="mono">' + esc(r.key_id || '—') +
      '</td><td>' + esc(r.model || '—') + '</td><td class="num">' + num(r.input_tokens) + ' / ' +
      num(r.output_tokens) + '</td><td class="num">' + num(r.duration_ms) + '</td><td class="mono">' +
      esc(r.request_id) + (r.client_request_id ? '<div class="muted" title="the client\'s X-Request-Id">client: ' +
      esc(r.client_request_id) + '</div>' : '') + '</td>' + (kind === 'errors' ? '<td>' + esc(r.error || '') + '</td>' : '') +
      '</tr>').join(''));
    if (!$('#log-table tbody tr')) {
      $('#log-table tbody').innerHTML = '<tr><td colspan="10" class="empty">Nothing matches.</td></tr>';
    }
    before = page.next_before;
    $('#more').hidden = !before;
  };
  $('#more').addEventListener('click', () => load().catch((e) => flash(e.message, true)));
  await load();
}

views.requests = () => logView('requests');
views.errors = () => logView('errors');

views.pool = async () => {
  title('CLI pool');
  const draw = async () => {
    const { pool: p } = await api('GET', '/admin/pool');
    const by = p.processes_by_state;
    const pct = (o) => (o ? num(o.p50) + ' / ' + num(o.p95) + ' / ' + num(o.p99) : '—');
    $('#view').innerHTML = '<div class="grid kpis">' +
      kpi('Processes', num(by.total), num(by.busy) + ' busy · ' + num(by.warm) + ' warm · ' + num(by.bound) + ' bound', 'processes') +
      kpi('Queue', num(p.queue_length), 'wait p50/p95/p99 ' + pct(p.queue_wait_ms) + ' ms', 'queue') +
      kpi('Jobs', num(p.totals.jobs), num(p.totals.succeeded) + ' ok · ' + num(p.totals.failed) + ' failed', 'jobs') +
      kpi('First event', pct(p.time_to_first_event_ms), 'ms, p50 / p95 / p99', 'ttfe') + '</div>' +
      '<form class="filters card" id="limits-form"><label>Min instances<input name="min" type="number" min="0" max="1024" value="' +
      esc(p.limits.min_instances) + '"></label><label>Max instances<input name="max" type="number" min="1" max="1024" value="' +
      esc(p.limits.max_instances) + '"></label><button class="primary">Apply</button>' +
      '<span class="muted">Warm processes kept, and the pool\'s bound.</span></form>' +
      '<div class="card table-card section"><table id="pool-table"><thead><tr><th>PID</th><th>State</th>' +
      '<th>Tenant</th><th>Conversation</th><th>Model</th><th class="num">Age</th><th class="num">Turns</th>' +
      '<th class="num">RSS MB</th></tr></thead><tbody>' + p.processes.map((x) => '<tr><td class="mono">' +
        esc(x.pid) + '</td><td><span class="badge ' + esc(x.state) + '">' + esc(x.state) + '</span></td><td>' +
        esc(x.tenant || '—') + '</td><td class="mono">' + esc(x.conversation || '—') + '</td><td>' +
        esc(x.model || '—') + '</td><td class="num">' + num(Math.round((x.age_ms || 0) / 1000)) + ' s</td><td class="num">' +
        num(x.turns) + '</td><td class="num">' + num(Math.round((x.rss_kb || 0) / 1024)) + '</td></tr>').join('') +
      '</tbody></table>' + (p.processes.length ? '' : '<div class="empty">No CLI process is running.</div>') + '</div>';
    $('#limits-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      api('POST', '/admin/pool/initialize', { minInstances: Number(ev.target.min.value),
        maxInstances: Number(ev.target.max.value) })
        .then(() => { flash('Pool limits applied.'); return draw(); }, (e) => flash(e.message, true));
    });
  };
  await draw();
  state.timer = setInterval(() => { if (!$('#limits-form input:focus')) draw().catch(() => {}); }, 5000);
};

/* Bytes as B, KB, MB, GB (powers of 1024). */
function size(n) {
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  n = Number(n) || 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
}

async function tenantLimits(name) {
  const t = await api('GET', '/admin/tenants/' + encodeURIComponent(name));
  const field = (k, label) => '<label>' + label + '<input name="' + k + '" type="number" min="0" value="' +
    (t[k + '_default'] ? '' : esc(t[k])) + '" placeholder="default (' + esc(t[k]) + ')"></label>';
  const out = await dialog('<h2>Workspace limits of “' + esc(name) + '”</h2>' +
    '<p>Empty: ccgate.conf\'s default. 0: no limit. A write past a limit gets 413.</p>' +
    field('workspace_max_bytes', 'Bytes') + field('workspace_max_files', 'Files') +
    '<p class="error"></p><div class="dialog-actions"><button value="cancel" formnovalidate>Cancel</button>' +
    '<button class="primary" value="ok">Save</button></div>',
  (f) => api('PUT', '/admin/tenants/' + encodeURIComponent(name), {
    workspace_max_bytes: limitValue(f.workspace_max_bytes.value),
    workspace_max_files: limitValue(f.workspace_max_files.value) }));
  if (out) flash('Limits of “' + name + '” saved.');
}

async function tenantPurge(name) {
  if (!await confirmDialog('Purge “' + name + '”?', 'Its CLI processes are stopped and its workspace, ' +
    'transcripts and conversations are deleted. Its keys stay: revoke them first if it is to stay gone.',
  'Purge', true)) return;
  const out = await api('DELETE', '/admin/tenants/' + encodeURIComponent(name));
  flash('“' + name + '” purged: ' + out.conversations + ' conversations.');
}

views.workspaces = async () => {
  title('Workspaces');
  const { workspaces: w } = await api('GET', '/admin/pool');
  const names = Object.keys(w || {}).sort();
  $('#view').innerHTML = '<div class="card table-card"><table id="workspaces-table"><thead><tr><th>Tenant</th>' +
    '<th class="num">Size</th><th class="num">Files</th><th class="num">Disk</th><th></th></tr></thead><tbody>' +
    names.map((n) => '<tr><td>' + esc(n) + '</td><td class="num">' + esc(size(w[n].bytes)) +
      (w[n].partial ? ' +' : '') + '</td><td class="num">' + num(w[n].files) + '</td><td class="num">' +
      esc(size(w[n].disk_bytes)) + '</td><td class="row-actions"><button data-act="limits" data-t="' + esc(n) +
      '">Limits…</button> <button class="danger" data-act="purge" data-t="' + esc(n) + '">Purge…</button></td></tr>')
      .join('') + '</tbody></table>' + (names.length ? '' : '<div class="empty">No tenant has a workspace yet.</div>') +
    '</div><p class="muted">Measured by ccgate-poold at most every 30 s.</p>';
  $('#workspaces-table').addEventListener('click', (ev) => {
    const b = ev.target.closest('button');
    if (!b) return;
    (b.dataset.act === 'limits' ? tenantLimits(b.dataset.t) : tenantPurge(b.dataset.t))
      .catch((e) => flash(e.message, true)).finally(() => { if (b.dataset.act === 'purge') route(); });
  });
};

views.audit = async () => {
  title('Audit log');
  const { audit } = await api('GET', '/admin/audit?limit=200');
  const diff = (a) => {
    if (!a.before || !a.after || typeof a.before !== 'object') return '';
    const changed = Object.keys(a.after).filter((k) => JSON.stringify(a.before[k]) !== JSON.stringify(a.after[k]));
    return changed.map((k) => esc(k) + ': ' + esc(JSON.stringify(a.before[k])) + ' → ' +
      esc(JSON.stringify(a.after[k]))).join('<br>') || (a.action === 'key.rotate' ? 'new secret' : '');
  };
  $('#view').innerHTML = '<div class="card table-card"><table id="audit-table"><thead><tr><th>Time (UTC)</th>' +
    '<th>Actor</th><th>From</th><th>Action</th><th>Object</th><th>Change</th></tr></thead><tbody>' +
    audit.map((a) => '<tr><td>' + esc(when(a.created_at)) + '</td><td>' + esc(a.actor) + '</td><td>' +
      esc(a.source_ip || '—') + '</td><td><span class="badge">' + esc(a.action) + '</span></td><td class="mono">' +
      esc(a.object_type + ' ' + a.object_id) + '</td><td class="mono">' + diff(a) + '</td></tr>').join('') +
    '</tbody></table>' + (audit.length ? '' : '<div class="empty">No change has been made yet.</div>') + '</div>';
};

/* --- start ------------------------------------------------------------ */

$('#login-form').addEventListener('submit', (ev) => signIn(ev).catch((e) => {
  $('#login-error').textContent = e.message;
}));
$('#logout').addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => { $('#flash').hidden = true; route(); });
if (state.token) start(); else signOut();
