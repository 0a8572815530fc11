// The official Anthropic SDK as a client of ccgate: node anthropic_client.cjs MODE ARGS.
// CCGATE_URL, CCGATE_KEY, CCGATE_CLIENTS (from deploy/install-test-clients).
const sdk = require(process.env.CCGATE_CLIENTS + '/node_modules/@anthropic-ai/sdk');
const Anthropic = sdk.default || sdk.Anthropic;
const client = new Anthropic({ baseURL: process.env.CCGATE_URL,
    apiKey: process.env.CCGATE_KEY, maxRetries: 0 });
const [mode, arg] = process.argv.slice(2);
const model = 'claude-sonnet-4-5';

async function main() {
    if (mode === 'create') {
        const m = await client.messages.create({ model, max_tokens: 256, messages: JSON.parse(arg) });
        return { text: m.content[0].text, usage: m.usage, stop_reason: m.stop_reason, type: m.type };
    }
    if (mode === 'stream') {
        const stream = client.messages.stream({ model, max_tokens: 256, messages: JSON.parse(arg) });
        const events = [];
        let text = '';
        for await (const ev of stream) {
            events.push(ev.type);
            if (ev.type === 'content_block_delta') text += ev.delta.text;
        }
        const final = await stream.finalMessage();
        return { events, text, final_text: final.content[0].text, usage: final.usage,
                 stop_reason: final.stop_reason };
    }
    if (mode === 'tools') {
        const { prompt, tools, results } = JSON.parse(arg);
        const messages = [{ role: 'user', content: prompt }];
        const stream = client.messages.stream({ model, max_tokens: 256, messages, tools });
        const first = await stream.finalMessage();
        const uses = first.content.filter((b) => b.type === 'tool_use');
        messages.push({ role: 'assistant', content: first.content });
        messages.push({ role: 'user', content: uses.map((u) => ({ type: 'tool_result', tool_use_id: u.id, content: results[u.name] })) });
        const m = await client.messages.create({ model, max_tokens: 256, messages, tools });
        return { stop_reason: first.stop_reason, calls: uses.map((u) => [u.name, u.input]),
                 text: m.content[0].text, final_stop: m.stop_reason };
    }
    if (mode === 'count') {
        return await client.messages.countTokens({ model, messages: JSON.parse(arg) });
    }
    if (mode === 'models') {
        const ids = [];
        for await (const m of client.models.list()) ids.push(m.id);
        const one = await client.models.retrieve(model);
        return { ids, one: one.id };
    }
    if (mode === 'bad-key') {
        const bad = new Anthropic({ baseURL: process.env.CCGATE_URL, apiKey: 'nope', maxRetries: 0 });
        try {
            await bad.messages.create({ model, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
            return { status: 200 };
        } catch (e) {
            return { status: e.status, type: e.error && e.error.error && e.error.error.type };
        }
    }
    throw new Error('unknown mode ' + mode);
}
main().then((r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });
