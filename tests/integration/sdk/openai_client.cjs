// The official OpenAI SDK as a client of ccgate: node openai_client.cjs MODE ARGS.
// CCGATE_URL, CCGATE_KEY, CCGATE_CLIENTS (from deploy/install-test-clients).
const OpenAI = require(process.env.CCGATE_CLIENTS + '/node_modules/openai').default;
const client = new OpenAI({ baseURL: process.env.CCGATE_URL + '/v1',
    apiKey: process.env.CCGATE_KEY, maxRetries: 0 });
const [mode, arg] = process.argv.slice(2);
const model = 'claude-sonnet-4-5';

async function main() {
    if (mode === 'chat') {
        const r = await client.chat.completions.create({ model, messages: JSON.parse(arg) });
        return { text: r.choices[0].message.content, usage: r.usage, object: r.object,
                 finish: r.choices[0].finish_reason };
    }
    if (mode === 'stream') {
        const stream = await client.chat.completions.create({ model, messages: JSON.parse(arg),
            stream: true, stream_options: { include_usage: true } });
        let text = '', chunks = 0, usage = null, finish = null;
        for await (const c of stream) {
            if (c.choices.length && c.choices[0].delta.content) { text += c.choices[0].delta.content; chunks++; }
            if (c.choices.length && c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
            if (c.usage) usage = c.usage;
        }
        return { text, chunks, usage, finish };
    }
    if (mode === 'tools') {
        // A tool round trip, streamed: the calls from delta fragments,
        // then the results, then the answer.
        const { prompt, tools, results } = JSON.parse(arg);
        const messages = [{ role: 'user', content: prompt }];
        const stream = await client.chat.completions.create({ model, messages, tools, stream: true });
        const calls = [];
        let finish = null, content = '';
        for await (const c of stream) {
            if (!c.choices.length) continue;
            if (c.choices[0].delta.content) content += c.choices[0].delta.content;
            for (const tc of c.choices[0].delta.tool_calls || []) {
                calls[tc.index] = calls[tc.index] || { id: '', type: 'function', function: { name: '', arguments: '' } };
                if (tc.id) calls[tc.index].id = tc.id;
                if (tc.function && tc.function.name) calls[tc.index].function.name += tc.function.name;
                if (tc.function && tc.function.arguments) calls[tc.index].function.arguments += tc.function.arguments;
            }
            if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
        }
        messages.push({ role: 'assistant', content: content || null, tool_calls: calls });
        for (const tc of calls) messages.push({ role: 'tool', tool_call_id: tc.id, content: results[tc.function.name] });
        const r = await client.chat.completions.create({ model, messages, tools });
        return { finish, calls: calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]),
                 text: r.choices[0].message.content, final_finish: r.choices[0].finish_reason };
    }
    if (mode === 'models') {
        const ids = [];
        for await (const m of client.models.list()) ids.push(m.id);
        return { ids };
    }
    if (mode === 'bad-model') {
        try {
            await client.chat.completions.create({ model: 'no-such-model',
                messages: [{ role: 'user', content: 'x' }] });
            return { status: 200 };
        } catch (e) {
            return { status: e.status, message: e.error && e.error.message, type: e.error && e.error.type };
        }
    }
    if (mode === 'idem') {
        // The same Idempotency-Key twice (replayed), then with another body (409).
        const { key, messages, other } = JSON.parse(arg);
        const opts = { headers: { 'Idempotency-Key': key } };
        const first = await client.chat.completions.create({ model, messages }, opts);
        const again = await client.chat.completions.create({ model, messages }, opts).withResponse();
        let conflict = null;
        try {
            await client.chat.completions.create({ model, messages: other }, opts);
        } catch (e) {
            conflict = { status: e.status, type: e.error && e.error.type };
        }
        return { first: first.choices[0].message.content, first_id: first.id,
                 again: again.data.choices[0].message.content, again_id: again.data.id,
                 replayed: again.response.headers.get('idempotent-replayed'), conflict };
    }
    throw new Error('unknown mode ' + mode);
}
main().then((r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });
