// The `ws` npm package as a WebSocket client of ccgate, driven by a test.
// CCGATE_CLIENTS (from deploy/install-test-clients); certificates are the
// test stack's own, so they are not verified.
//
//   node wsclient.cjs one URL OPTIONS_JSON
//       One socket.  OPTIONS_JSON: {"headers": {...}, "protocols": [...]}.
//       Reads commands from stdin, one JSON object a line:
//         {"op": "send", "text": "..."}      a text frame
//         {"op": "binary", "text": "..."}    a binary frame
//         {"op": "close"}                    a normal close (1000)
//         {"op": "vanish"}                   drop the TCP connection, no close frame
//       and writes what happens to stdout, one JSON object a line:
//         {"ev": "open", "protocol": "..."}
//         {"ev": "msg", "data": {...}}
//         {"ev": "close", "code": N, "reason": "..."}
//         {"ev": "refused", "status": N, "body": "...", "headers": {...}}
//         {"ev": "error", "message": "..."}
//
//   node wsclient.cjs many URL KEY N MESSAGE [CONV,CONV,...]
//       N sockets at once, each sends one chat turn (in the conversations
//       given, taken in turn) and waits for its done event while all stay
//       open; prints one summary object.
'use strict';
const WebSocket = require(process.env.CCGATE_CLIENTS + '/node_modules/ws');
const readline = require('readline');

const [mode, url] = process.argv.slice(2, 4);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

function one(opts) {
    const ws = new WebSocket(url, opts.protocols || [], {
        headers: opts.headers || {}, rejectUnauthorized: false,
        maxPayload: 64 * 1024 * 1024 });
    ws.on('open', () => out({ ev: 'open', protocol: ws.protocol }));
    ws.on('message', (data, binary) => {
        let parsed;
        try { parsed = JSON.parse(data.toString()); } catch (e) { parsed = { unparsed: data.toString() }; }
        out({ ev: 'msg', data: parsed, binary });
    });
    ws.on('close', (code, reason) => {
        out({ ev: 'close', code, reason: reason.toString() });
        process.exit(0);
    });
    ws.on('unexpected-response', (req, res) => {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => {
            out({ ev: 'refused', status: res.statusCode, body, headers: res.headers });
            process.exit(0);
        });
    });
    ws.on('error', (e) => out({ ev: 'error', message: e.message }));
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
        const cmd = JSON.parse(line);
        if (cmd.op === 'send') ws.send(cmd.text);
        else if (cmd.op === 'binary') ws.send(Buffer.from(cmd.text), { binary: true });
        else if (cmd.op === 'close') ws.close(1000);
        else if (cmd.op === 'vanish') { ws._socket.destroy(); out({ ev: 'vanished' }); process.exit(0); }
    });
}

function many(key, n, message, convs) {
    const t0 = Date.now();
    const summary = { sockets: n, opened: 0, done: 0, errors: [], texts: {},
                      max_open: 0, closed_early: 0 };
    let open = 0, finished = 0;
    const sockets = [];
    const end = () => {
        if (++finished < n) return;
        summary.seconds = (Date.now() - t0) / 1000;
        for (const ws of sockets) ws.close(1000);
        out(summary);
        setTimeout(() => process.exit(0), 200);
    };
    for (let i = 0; i < n; i++) {
        const ws = new WebSocket(url, [], { headers: { Authorization: 'Bearer ' + key },
            rejectUnauthorized: false });
        sockets.push(ws);
        let ended = false;
        const finish = () => { if (!ended) { ended = true; end(); } };
        ws.on('open', () => {
            summary.opened++;
            summary.max_open = Math.max(summary.max_open, ++open);
            const frame = { type: 'chat', message: message + ' #' + i };
            if (convs.length) frame.conversation_id = convs[i % convs.length];
            ws.send(JSON.stringify(frame));
        });
        ws.on('message', (data) => {
            const ev = JSON.parse(data.toString());
            if (ev.type === 'done') {
                summary.done++;
                summary.texts[ev.response] = (summary.texts[ev.response] || 0) + 1;
                finish();
            } else if (ev.type === 'error') {
                summary.errors.push(ev.status + ' ' + ev.error.message);
                finish();
            }
        });
        ws.on('unexpected-response', (req, res) => {
            summary.errors.push('refused ' + res.statusCode);
            finish();
        });
        ws.on('error', (e) => { summary.errors.push('error ' + e.message); finish(); });
        ws.on('close', () => { open--; if (!ended) summary.closed_early++; finish(); });
    }
}

if (mode === 'one') one(JSON.parse(process.argv[4] || '{}'));
else if (mode === 'many') {
    many(process.argv[4], parseInt(process.argv[5], 10), process.argv[6],
         (process.argv[7] || '').split(',').filter((c) => c));
}
else { console.error('usage: wsclient.cjs one|many URL ...'); process.exit(2); }
