// The official OpenAI client library (npm package `openai`) against a running `frugal serve`.
//   node client_test.mjs BASE_URL API_KEY MODEL
// Lists and retrieves the model; makes greedy chat and text completions, plain and streamed, and
// checks that the streamed deltas add up to the plain answer and that usage is reported; checks
// that the library raises its typed errors for a wrong key (401), an unknown model (404) and an
// unsupported parameter (400, with param and code). Exits non-zero on the first failure.
import assert from "node:assert/strict";
import OpenAI from "openai";

const [baseUrl, apiKey, model] = process.argv.slice(2);
if (!baseUrl || !apiKey || !model) {
  console.error("usage: node client_test.mjs BASE_URL API_KEY MODEL");
  process.exit(2);
}

const client = new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });

async function expectError(what, call, ErrorClass, status, check = () => {}) {
  try {
    await call();
  } catch (error) {
    assert.ok(error instanceof ErrorClass, `${what}: ${error} is not a ${ErrorClass.name}`);
    assert.equal(error.status, status, `${what}: status`);
    check(error);
    console.log(`ok: ${what} -> ${status} ${ErrorClass.name}`);
    return;
  }
  assert.fail(`${what}: no error`);
}

// Models.
const models = [];
for await (const m of client.models.list()) models.push(m);
assert.deepEqual(models.map((m) => m.id), [model]);
assert.equal(models[0].object, "model");
const retrieved = await client.models.retrieve(model);
assert.equal(retrieved.id, model);
console.log(`ok: models.list and models.retrieve -> ${model}`);

// Chat, plain.
const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Say something about cats." },
];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
assert.equal(chat.object, "chat.completion");
assert.equal(chat.choices.length, 1);
assert.equal(chat.choices[0].message.role, "assistant");
assert.equal(typeof chat.choices[0].message.content, "string");
assert.ok(["stop", "length"].includes(chat.choices[0].finish_reason));
assert.ok(chat.usage.prompt_tokens > 0);
assert.ok(chat.usage.completion_tokens >= 1 && chat.usage.completion_tokens <= 12);
assert.equal(chat.usage.total_tokens, chat.usage.prompt_tokens + chat.usage.completion_tokens);
console.log(`ok: chat.completions.create -> ${JSON.stringify(chat.choices[0].message.content)}`);

// Chat, streamed: the same greedy answer, delta by delta, then usage.
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 12, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
let streamed = "";
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  assert.equal(chunk.object, "chat.completion.chunk");
  if (chunk.usage) usage = chunk.usage;
  for (const choice of chunk.choices) {
    streamed += choice.delta.content ?? "";
    if (choice.finish_reason) finish = choice.finish_reason;
  }
}
assert.equal(streamed, chat.choices[0].message.content);
assert.equal(finish, chat.choices[0].finish_reason);
assert.deepEqual(usage, chat.usage);
console.log(`ok: chat.completions.create stream -> ${chunks} chunks, same text and usage`);

// Text completions, plain and streamed.
const completion = await client.completions.create({ model, prompt: "The cat", max_tokens: 6, temperature: 0 });
assert.equal(completion.object, "text_completion");
assert.equal(typeof completion.choices[0].text, "string");
let streamedText = "";
for await (const chunk of await client.completions.create({
  model, prompt: "The cat", max_tokens: 6, temperature: 0, stream: true,
})) {
  streamedText += chunk.choices[0]?.text ?? "";
}
assert.equal(streamedText, completion.choices[0].text);
console.log("ok: completions.create plain and stream agree");

// Errors, as the library's typed exceptions.
const wrongKey = new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: "wrong-key", maxRetries: 0 });
await expectError("wrong API key", () => wrongKey.models.list(), OpenAI.AuthenticationError, 401,
  (e) => assert.equal(e.code, "invalid_api_key"));
await expectError("unknown model",
  () => client.chat.completions.create({ model: "no-such-model", messages }),
  OpenAI.NotFoundError, 404, (e) => assert.equal(e.code, "model_not_found"));
await expectError("n = 2", () => client.chat.completions.create({ model, messages, n: 2 }),
  OpenAI.BadRequestError, 400, (e) => {
    assert.equal(e.param, "n");
    assert.equal(e.code, "unsupported_parameter");
  });
console.log("all ok");
