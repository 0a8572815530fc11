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
    throw new Error('unknown mode ' + mode);
}
main().then((r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });
