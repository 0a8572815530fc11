// The admin UI in a real browser: Debian's chromium driven by
// playwright-core, through nginx, against the real stack.  Prints one JSON
// line of what it saw; throws (exit 1) at the first thing that is wrong.
//   CCGATE_URL, CCGATE_ADMIN_USER, CCGATE_ADMIN_PASSWORD
//   CCGATE_CLIENTS   the folder of deploy/install-test-clients
//   CCGATE_CHROMIUM  the browser (/usr/bin/chromium)
//   CCGATE_SHOTS     where the screenshots go
'use strict';
const { chromium } = require(process.env.CCGATE_CLIENTS + '/node_modules/playwright-core');
const path = require('path');

const base = process.env.CCGATE_URL;
const shots = process.env.CCGATE_SHOTS;
let page;
let n = 0;

function check(cond, what) {
    if (!cond) throw new Error('admin UI: ' + what);
}

async function shot(name) {
    n++;
    await page.screenshot({ path: path.join(shots, String(n).padStart(2, '0') + '-' + name + '.png'),
        fullPage: true });
}

// Call the client API with a key, as a program would.
async function callApi(key) {
    const r = await fetch(base + '/api/chat', { method: 'POST',
        headers: { Authorization: 'Bearer ' + key, 'Content-Type': 'application/json' },
        body: JSON.stringify({ message: 'hello from the browser test' }) });
    const body = await r.json();
    return { status: r.status, id: r.headers.get('x-request-id'), body };
}

// Usage rows are written just after each answer, in batches: load url
// until selector shows (a request log page does not refresh by itself).
async function loadUntil(url, selector) {
    for (let i = 0; ; i++) {
        await page.goto(url);
        await page.reload();
        try {
            await page.waitForSelector(selector, { timeout: 1000 });
            return;
        } catch (e) {
            check(i < 20, 'never showed ' + selector + ' at ' + url);
        }
    }
}

async function keyRow(name) {
    return page.locator('#keys-table tr', { hasText: name });
}

async function main() {
    const browser = await chromium.launch({ executablePath: process.env.CCGATE_CHROMIUM,
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
            '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
    const context = await browser.newContext({ ignoreHTTPSErrors: true,
        viewport: { width: 1360, height: 860 } });
    page = await context.newPage();
    const foreign = [], problems = [];
    page.on('request', (r) => { if (!r.url().startsWith(base)) foreign.push(r.url()); });
    page.on('pageerror', (e) => problems.push('page error: ' + e.message));
    page.on('console', (m) => { if (m.type() === 'error' && !/status of 4\d\d/.test(m.text()))
        problems.push('console: ' + m.text()); });
    const seen = {};
    try {
        // Log in: a wrong password first.
        await page.goto(base + '/admin/');
        await page.waitForSelector('#login-form');
        await shot('login');
        await page.fill('input[name=username]', process.env.CCGATE_ADMIN_USER);
        await page.fill('input[name=password]', 'not the password');
        await page.click('#login-form button');
        await page.waitForFunction(() => document.querySelector('#login-error').textContent !== '');
        seen.login_error = await page.textContent('#login-error');
        await page.fill('input[name=password]', process.env.CCGATE_ADMIN_PASSWORD);
        await page.click('#login-form button');
        await page.waitForSelector('#title:has-text("Dashboard")');
        await page.waitForSelector('[data-kpi=pool] .value');
        await shot('dashboard');

        // Create a key; its secret is shown once.
        await page.click('a[data-view=keys]');
        await page.waitForSelector('#title:has-text("API keys")');
        await page.click('#actions button:has-text("New key")');
        await page.fill('#dialog input[name=name]', 'browser-key');
        await page.fill('#dialog input[name=user_id]', 'ui-team');
        await page.fill('#dialog input[name=rpd]', '100');
        await page.fill('#dialog input[name=max_concurrent]', '4');
        await page.uncheck('#dialog input[name=queue]');
        await shot('key-form');
        await page.click('#dialog button[value=ok]');
        await page.waitForSelector('#new-secret');
        const key = (await page.textContent('#new-secret')).trim();
        check(/^ccg_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$/.test(key), 'the new key looks wrong: ' + key);
        await shot('key-created');
        await page.click('#dialog button[value=ok]');
        await page.waitForSelector('#keys-table tr:has-text("browser-key")');
        const kid = key.slice(4, 20);
        seen.key_id = kid;

        // The key works; its call shows in the request log and the charts.
        const call = await callApi(key);
        check(call.status === 200, 'a new key was refused: ' + JSON.stringify(call.body));
        seen.request_id = call.id;
        await loadUntil(base + '/admin/#/requests?key_id=' + kid,
            '#log-table tbody tr[data-request="' + call.id + '"]');
        await shot('requests');
        for (let i = 0; ; i++) {
            await page.goto(base + '/admin/#/dashboard');
            await page.reload();
            await page.waitForSelector('[data-chart=requests] svg');
            const bars = await page.$$eval('[data-chart=requests] rect.bar',
                (rs) => rs.map((r) => Number(r.dataset.y)));
            if (bars.reduce((a, b) => a + b, 0) >= 1) { seen.chart_requests = bars.reduce((a, b) => a + b, 0); break; }
            check(i < 20, 'the usage chart never showed the call');
            await page.waitForTimeout(500);
        }
        seen.kpi_requests = await page.textContent('[data-kpi=requests] .value');
        await shot('dashboard-usage');
        await loadUntil(base + '/admin/#/key/' + kid, 'table tbody tr');
        await page.waitForSelector('#title:has-text("browser-key")');
        seen.key_usage_row = await page.textContent('table tbody tr');
        await shot('key-usage');

        // Suspend: the API refuses the key; activate: it works again.
        await page.goto(base + '/admin/#/keys');
        await (await keyRow('browser-key')).locator('button[data-act=suspend]').click();
        await page.waitForSelector('#keys-table tr:has-text("browser-key") .badge.suspended');
        await shot('suspended');
        seen.suspended = await callApi(key);
        check(seen.suspended.status === 401, 'a suspended key was accepted');
        await (await keyRow('browser-key')).locator('button[data-act=activate]').click();
        await page.waitForSelector('#keys-table tr:has-text("browser-key") .badge.active');
        seen.activated = (await callApi(key)).status;

        // Rotate without grace: only the new secret works.
        await (await keyRow('browser-key')).locator('button[data-act=rotate]').click();
        await page.fill('#dialog input[name=grace]', '0');
        await page.click('#dialog button[value=ok]');
        await page.waitForSelector('#new-secret');
        const rotated = (await page.textContent('#new-secret')).trim();
        check(rotated !== key && rotated.startsWith('ccg_' + kid + '_'), 'rotation gave ' + rotated);
        await shot('rotated');
        await page.click('#dialog button[value=ok]');
        seen.old_after_rotate = (await callApi(key)).status;
        seen.new_after_rotate = (await callApi(rotated)).status;

        // Revoke: refused for good.
        await page.waitForSelector('#keys-table tr:has-text("browser-key") button[data-act=revoke]');
        await (await keyRow('browser-key')).locator('button[data-act=revoke]').click();
        await page.waitForSelector('#dialog h2:has-text("Revoke")');
        await shot('revoke-confirm');
        await page.click('#dialog button[value=ok]');
        await page.waitForSelector('#keys-table tr:has-text("browser-key") .badge.revoked');
        await shot('revoked');
        seen.revoked = await callApi(rotated);

        // The refusals are in the error log; the pool and the audit log.
        // Two refusals of this key (suspended, revoked: the old secret is
        // an unknown key, logged without a key id); usage rows are
        // written just after each answer, so the page may need a reload.
        for (let i = 0; ; i++) {
            await page.goto(base + '/admin/#/errors?key_id=' + kid);
            await page.reload();
            await page.waitForSelector('#log-table tbody tr');
            seen.error_rows = await page.$$eval('#log-table tbody tr[data-request]', (rs) => rs.length);
            if (seen.error_rows >= 2 || i >= 20) break;
            await page.waitForTimeout(300);
        }
        await shot('errors');
        await page.goto(base + '/admin/#/pool');
        await page.waitForSelector('#pool-table tbody tr');
        seen.pool_rows = await page.$$eval('#pool-table tbody tr', (rs) => rs.length);
        await shot('pool');
        // Workspaces: each tenant's use; set one's limits in the dialog.
        await page.goto(base + '/admin/#/workspaces');
        await page.waitForSelector('#workspaces-table tbody tr');
        seen.workspaces = await page.$$eval('#workspaces-table tbody tr', (rs) => rs.map((r) => r.cells[0].textContent));
        await page.click('#workspaces-table button[data-act=limits][data-t="ui-team"]');
        await page.waitForSelector('#dialog-form input[name=workspace_max_bytes]');
        await page.fill('#dialog-form input[name=workspace_max_bytes]', '12345');
        await page.click('#dialog-form button[value=ok]');
        await page.waitForSelector('#flash:not([hidden])');
        seen.limits_flash = await page.textContent('#flash');
        await shot('workspaces');
        await page.goto(base + '/admin/#/audit');
        await page.waitForSelector('#audit-table tbody tr');
        seen.audit = await page.$$eval('#audit-table tbody tr', (rs) => rs.map((r) => r.cells[3].textContent));
        await shot('audit');

        await page.click('#logout');
        await page.waitForSelector('#login-form');
        seen.signed_out = true;
    } catch (e) {
        await shot('failure').catch(() => {});
        throw e;
    } finally {
        await browser.close();
    }
    seen.foreign_requests = foreign;
    seen.problems = problems;
    console.log(JSON.stringify(seen));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
