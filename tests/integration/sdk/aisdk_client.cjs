// The Vercel AI SDK (ai, @ai-sdk/anthropic, @ai-sdk/openai) as a client of
// ccgate: node aisdk_client.cjs PROVIDER MODE ARGS, PROVIDER "anthropic"
// (the Messages API) or "openai" (chat completions), MODE "generate" or
// "stream", ARGS {"messages", "stopSequences", "maxOutputTokens"} with
// image parts as {"type":"image","image":<base64>,"mediaType":...}.
// CCGATE_URL, CCGATE_KEY, CCGATE_CLIENTS (from deploy/install-test-clients).
const base = process.env.CCGATE_CLIENTS + '/node_modules/';
const { generateText, streamText, tool, jsonSchema, stepCountIs } = require(base + 'ai');
const { createAnthropic } = require(base + '@ai-sdk/anthropic');
const { createOpenAI } = require(base + '@ai-sdk/openai');
const [provider, mode, arg] = process.argv.slice(2);
const opts = JSON.parse(arg);
const modelId = 'claude-sonnet-4-5';
const settings = { baseURL: process.env.CCGATE_URL + '/v1', apiKey: process.env.CCGATE_KEY };
const model = provider === 'anthropic' ? createAnthropic(settings)(modelId)
    : createOpenAI(settings).chat(modelId);

async function main() {
    const call = { model, messages: opts.messages, maxRetries: 0 };
    if (opts.stopSequences) call.stopSequences = opts.stopSequences;
    if (opts.maxOutputTokens) call.maxOutputTokens = opts.maxOutputTokens;
    // Tools the SDK runs itself: each answers with opts.results[name].
    const ran = [];
    if (opts.tools) {
        call.tools = {};
        for (const name of opts.tools) {
            call.tools[name] = tool({ description: 'Look up ' + name,
                inputSchema: jsonSchema({ type: 'object', properties: { city: { type: 'string' } },
                    required: ['city'] }),
                execute: async (input) => { ran.push([name, input]); return opts.results[name]; } });
        }
        call.stopWhen = stepCountIs(3);
    }
    if (mode === 'generate') {
        const r = await generateText(call);
        return { text: r.text, finishReason: r.finishReason, usage: r.usage, ran,
                 steps: r.steps.length };
    }
    if (mode === 'stream') {
        const r = streamText(call);
        let text = '', parts = 0;
        for await (const piece of r.textStream) { text += piece; parts++; }
        return { text, parts, finishReason: await r.finishReason, usage: await r.usage, ran,
                 steps: (await r.steps).length };
    }
    throw new Error('unknown mode ' + mode);
}
main().then((r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });
