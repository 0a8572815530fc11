#!/usr/bin/env python3
"""The OpenAI- and Anthropic-compatible routes, through nginx, with raw
HTTP and with the official SDKs (openai, @anthropic-ai/sdk from npm) as
clients: shapes, streams, history mapped onto conversations, errors."""

import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, SRCDIR, CLAUDE, texts_of, wait_for, main, pinned_clients  # noqa: E402

stack = None
CLIENTS = None
MODEL = "claude-sonnet-4-5"
PARK_MS = 10000


def setUpModule():
    global stack, CLIENTS
    CLIENTS = pinned_clients()
    # A turn waits 10 s for its tool results here (Tools.test_late_results).
    stack = Stack({"tool_park_ms": PARK_MS}, name="compat").start()
    stack.create_key("alice", user="alice")


def tearDownModule():
    stack.stop()


def post(path, body, headers=None, key="alice"):
    return stack.request("POST", path, body, key=stack.keys[key],
                         headers=headers)


def sse(path, body, key="alice"):
    """Raw SSE: (response, [(event name or None, data)])."""
    c = stack.conn()
    try:
        c.request("POST", path, body=json.dumps(body).encode(), headers={
            "Authorization": "Bearer " + stack.keys[key],
            "Content-Type": "application/json"})
        r = c.getresponse()
        out, name = [], None
        for line in r:
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                d = line[6:]
                out.append((name, d if d == "[DONE]" else json.loads(d)))
                name = None
        return r, out
    finally:
        c.close()


def last_record(text):
    return [r for r in stack.mock_records()
            if texts_of(r) and texts_of(r)[-1][0] == "user" and
            text in texts_of(r)[-1][1]][-1]


def sdk(which, mode, arg=None):
    env = dict(os.environ, CCGATE_URL="https://127.0.0.1:%d" % stack.port,
               CCGATE_KEY=stack.keys["alice"], CCGATE_CLIENTS=CLIENTS,
               NODE_EXTRA_CA_CERTS=stack.path("tls.crt"))
    args = ["node", os.path.join(SRCDIR, "tests", "integration", "sdk",
                                 "%s_client.cjs" % which), mode]
    if arg is not None:
        args.append(json.dumps(arg))
    r = subprocess.run(args, capture_output=True, text=True, env=env,
                       timeout=120)
    if r.returncode != 0:
        raise AssertionError("%s %s failed: %s" % (which, mode, r.stderr))
    return json.loads(r.stdout)


class OpenAI(unittest.TestCase):
    def test_completion(self):
        r = post("/v1/chat/completions", {
            "model": MODEL, "messages": [{"role": "user", "content": "oa one"}],
            "temperature": 0.2, "top_p": 0.9})
        self.assertEqual(r.status, 200, r)
        b = r.json()
        self.assertEqual(b["object"], "chat.completion")
        self.assertTrue(b["id"].startswith("chatcmpl-"))
        self.assertEqual(b["model"], MODEL)
        self.assertEqual(b["choices"][0]["message"]["role"], "assistant")
        rec = last_record("oa one")
        self.assertEqual(b["choices"][0]["message"]["content"],
                         rec["response"]["text"])
        self.assertEqual(b["choices"][0]["finish_reason"], "stop")
        self.assertEqual(b["usage"]["completion_tokens"],
                         rec["response"]["usage"]["output_tokens"])
        self.assertEqual(b["usage"]["total_tokens"],
                         b["usage"]["prompt_tokens"] +
                         b["usage"]["completion_tokens"])
        self.assertEqual(r.headers["x-ccgate-ignored"], "temperature, top_p")
        self.assertIn("x-ccgate-conversation-id", r.headers)

    def test_stream_with_usage(self):
        r, events = sse("/v1/chat/completions", {
            "model": MODEL, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "oa stream [[mock:chunks=6]]"}]})
        self.assertEqual(r.status, 200)
        data = [d for _, d in events]
        self.assertEqual(data[-1], "[DONE]")
        chunks = data[:-1]
        self.assertTrue(all(c["object"] == "chat.completion.chunk"
                            for c in chunks))
        self.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant")
        text = "".join(c["choices"][0]["delta"].get("content", "")
                       for c in chunks if c["choices"])
        self.assertEqual(text, last_record("oa stream")["response"]["text"])
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 6)

    def test_history_continues_the_conversation(self):
        first = post("/v1/chat/completions", {"model": MODEL, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "oa remember 31337"}]})
        reply = first.json()["choices"][0]["message"]["content"]
        cid = first.headers["x-ccgate-conversation-id"]
        before = stack.stats()
        hits = stack.metric("ccgate_conversation_cache_total", result="hit")
        second = post("/v1/chat/completions", {"model": MODEL, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "oa remember 31337"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "oa which number?"}]})
        self.assertEqual(second.status, 200, second)
        self.assertEqual(second.headers["x-ccgate-conversation-id"], cid)
        after = stack.stats()
        self.assertEqual(after["placed"]["bound"], before["placed"]["bound"] + 1,
                         "the turn should reuse the conversation's CLI")
        # Found by its history, the conversation came from ccgate-fcgi's
        # cache (its row checked by the INSERT of the message).
        self.assertEqual(stack.metric("ccgate_conversation_cache_total",
                                      result="hit"), hits + 1)
        rec = last_record("oa which number?")
        self.assertEqual(texts_of(rec), [("user", "oa remember 31337"),
                                         ("assistant", reply),
                                         ("user", "oa which number?")])
        system = rec["body"]["system"]
        self.assertIn("You are terse.", json.dumps(system))

    def test_unknown_history_primes_a_new_session(self):
        r = post("/v1/chat/completions", {"model": MODEL, "messages": [
            {"role": "user", "content": "oa earlier question"},
            {"role": "assistant", "content": "an answer ccgate never gave"},
            {"role": "user", "content": "oa follow-up"}]})
        self.assertEqual(r.status, 200, r)
        rec = last_record("oa follow-up")
        sent = texts_of(rec)[-1][1]
        self.assertIn("an answer ccgate never gave", sent)
        self.assertIn("oa earlier question", sent)
        cid = r.headers["x-ccgate-conversation-id"]
        conv = stack.request("GET", "/api/conversations/" + cid,
                             key=stack.keys["alice"]).json()
        self.assertEqual([m["content"] for m in conv["messages"]][:3],
                         ["oa earlier question", "an answer ccgate never gave",
                          "oa follow-up"])

    def test_errors_in_openai_shape(self):
        for body, status, field in (
                ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
                ({"model": MODEL, "messages": []}, 400, "messages"),
                ({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                  "tools": [{"type": "function"}]}, 400, "tools"),
                ({"model": MODEL, "n": 2,
                  "messages": [{"role": "user", "content": "x"}]}, 400, "n"),
                ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]},
                 400, "messages[0].tool_call_id"),
                ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
                 400, "messages[0].role"),
                ({"model": MODEL, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "x"}}]}]},
                 400, "messages[0].content[0]")):
            r = post("/v1/chat/completions", body)
            self.assertEqual(r.status, status, (body, r))
            e = r.json()["error"]
            self.assertEqual(e["type"], "invalid_request_error")
            self.assertIsNone(e["param"])
            self.assertTrue(e["message"].startswith(field), e)
        r = stack.request("POST", "/v1/chat/completions", {"model": MODEL})
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json()["error"]["type"], "authentication_error")

    def test_models(self):
        r = stack.request("GET", "/v1/models", key=stack.keys["alice"])
        self.assertEqual(r.json()["object"], "list")
        self.assertEqual([m["id"] for m in r.json()["data"]],
                         [MODEL, "claude-haiku-4-5"])

    def test_official_sdk(self):
        out = sdk("openai", "chat", [{"role": "user", "content": "sdk hello"}])
        self.assertEqual(out["text"], last_record("sdk hello")["response"]["text"])
        self.assertEqual(out["finish"], "stop")
        out = sdk("openai", "stream", [{"role": "user",
                                        "content": "sdk stream [[mock:chunks=5]]"}])
        self.assertEqual(out["chunks"], 5)
        self.assertEqual(out["text"], last_record("sdk stream")["response"]["text"])
        self.assertEqual(out["usage"]["completion_tokens"], 5)
        self.assertEqual(sdk("openai", "models")["ids"], [MODEL, "claude-haiku-4-5"])
        err = sdk("openai", "bad-model")
        self.assertEqual(err["status"], 400)
        self.assertIn("no-such-model", err["message"])


class Anthropic(unittest.TestCase):
    def test_message(self):
        r = post("/v1/messages", {"model": MODEL, "max_tokens": 100,
                                  "messages": [{"role": "user",
                                                "content": "an one"}]},
                 headers={"x-api-key": stack.keys["alice"],
                          "anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 200, r)
        b = r.json()
        self.assertEqual((b["type"], b["role"], b["stop_reason"]),
                         ("message", "assistant", "end_turn"))
        rec = last_record("an one")
        self.assertEqual(b["content"], [{"type": "text",
                                         "text": rec["response"]["text"]}])
        self.assertEqual(b["usage"]["output_tokens"],
                         rec["response"]["usage"]["output_tokens"])

    def test_stream_event_sequence(self):
        r, events = sse("/v1/messages", {
            "model": MODEL, "max_tokens": 100, "stream": True,
            "system": [{"type": "text", "text": "Be kind."}],
            "messages": [{"role": "user", "content": "an stream [[mock:chunks=4]]"}]})
        self.assertEqual(r.status, 200)
        names = [n for n, _ in events]
        self.assertEqual(names, ["message_start", "content_block_start"] +
                         ["content_block_delta"] * 4 +
                         ["content_block_stop", "message_delta", "message_stop"])
        self.assertTrue(all(d["type"] == n for n, d in events))
        text = "".join(d["delta"]["text"] for n, d in events
                       if n == "content_block_delta")
        rec = last_record("an stream")
        self.assertEqual(text, rec["response"]["text"])
        self.assertEqual(events[-2][1]["usage"]["output_tokens"], 4)
        self.assertIn("Be kind.", json.dumps(rec["body"]["system"]))

    def test_history_continues(self):
        first = post("/v1/messages", {"model": MODEL, "max_tokens": 50,
                                      "messages": [{"role": "user",
                                                    "content": "an keep 99"}]})
        reply = first.json()["content"][0]["text"]
        second = post("/v1/messages", {"model": MODEL, "max_tokens": 50,
                                       "messages": [
                                           {"role": "user", "content": "an keep 99"},
                                           {"role": "assistant", "content": [
                                               {"type": "text", "text": reply}]},
                                           {"role": "user", "content": "an which?"}]})
        self.assertEqual(second.headers["x-ccgate-conversation-id"],
                         first.headers["x-ccgate-conversation-id"])
        self.assertEqual(texts_of(last_record("an which?")),
                         [("user", "an keep 99"), ("assistant", reply),
                          ("user", "an which?")])

    def test_errors_in_anthropic_shape(self):
        r = post("/v1/messages", {"model": MODEL, "messages": [
            {"role": "user", "content": "x"}]})
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["type"], "error")
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        self.assertTrue(r.json()["error"]["message"].startswith("max_tokens"))
        r = post("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": [
            {"role": "system", "content": "x"}]})
        self.assertEqual(r.status, 400)
        self.assertTrue(r.json()["error"]["message"].startswith(
            "messages[0].role"))
        r = stack.request("POST", "/v1/messages", {"model": MODEL},
                          headers={"x-api-key": "wrong"})
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json()["error"]["type"], "authentication_error")

    def test_official_sdk(self):
        out = sdk("anthropic", "create", [{"role": "user", "content": "asdk hi"}])
        self.assertEqual(out["text"], last_record("asdk hi")["response"]["text"])
        self.assertEqual(out["stop_reason"], "end_turn")
        out = sdk("anthropic", "stream", [{"role": "user",
                                           "content": "asdk stream [[mock:chunks=3]]"}])
        self.assertEqual(out["events"][0], "message_start")
        self.assertEqual(out["events"][-1], "message_stop")
        self.assertEqual(out["text"], out["final_text"])
        self.assertEqual(out["text"],
                         last_record("asdk stream")["response"]["text"])
        self.assertEqual(out["usage"]["output_tokens"], 3)
        err = sdk("anthropic", "bad-key")
        self.assertEqual((err["status"], err["type"]),
                         (401, "authentication_error"))


class Truthful(unittest.TestCase):
    """What the answers say is what happened: why they ended, the input
    usage a stream starts with, stop sequences, fields not applied."""

    def test_max_tokens_ends_the_answer_as_the_upstream_did(self):
        # The mock stops at max_tokens words, as the real API stops at
        # max_tokens tokens; the CLI would ask the model to go on.
        r = post("/v1/chat/completions", {
            "model": MODEL, "max_tokens": 3,
            "messages": [{"role": "user", "content": "cut one two three four"}]})
        self.assertEqual(r.status, 200, r)
        b = r.json()
        self.assertEqual(b["choices"][0]["finish_reason"], "length")
        self.assertEqual(b["choices"][0]["message"]["content"],
                         "mock reply #%d:" % last_record("cut one")["seq"])
        # One upstream answer, not the CLI's "go on" requests after it.
        # (The CLI's own side requests, a title, quote the message too.)
        self.assertEqual(len([rec for rec in stack.mock_records()
                              if texts_of(rec) and texts_of(rec)[-1] ==
                              ("user", "cut one two three four")]), 1)
        # The CLI asks the model to go on at once; the mock answers that
        # request late, so the interrupt meets at most the first "go on",
        # and nothing it got back was the client's.
        self.assertLessEqual(len([rec for rec in stack.mock_records()
                                  if "Output token limit" in
                                  json.dumps(rec["body"])]), 1)
        cid = r.headers["x-ccgate-conversation-id"]
        conv = stack.request("GET", "/api/conversations/" + cid,
                             key=stack.keys["alice"]).json()
        self.assertEqual(conv["messages"][-1]["content"],
                         b["choices"][0]["message"]["content"])
        # The conversation goes on, on the same process: the turn was
        # interrupted, not the CLI.
        before = stack.stats()["placed"]["bound"]
        r2 = post("/v1/chat/completions", {"model": MODEL, "max_tokens": 3,
                                           "messages": [
            {"role": "user", "content": "cut one two three four"},
            {"role": "assistant",
             "content": b["choices"][0]["message"]["content"]},
            {"role": "user", "content": "cut again"}]})
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.headers["x-ccgate-conversation-id"], cid)
        self.assertEqual(r2.json()["choices"][0]["finish_reason"], "length")
        self.assertEqual(stack.stats()["placed"]["bound"], before + 1)
        # Anthropic says max_tokens, streamed too.
        r, events = sse("/v1/messages", {
            "model": MODEL, "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": "an cut a b c"}]})
        delta = [d for n, d in events if n == "message_delta"][0]
        self.assertEqual(delta["delta"]["stop_reason"], "max_tokens")
        text = "".join(d["delta"]["text"] for n, d in events
                       if n == "content_block_delta")
        self.assertEqual(text, "mock reply")

    def test_message_start_carries_the_input_usage(self):
        r, events = sse("/v1/messages", {
            "model": MODEL, "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "an usage [[mock:slow=1500]]"}]})
        self.assertEqual(r.status, 200)
        start = events[0][1]["message"]["usage"]
        rec = last_record("an usage")
        self.assertEqual(start["input_tokens"],
                         rec["response"]["usage"]["input_tokens"])
        self.assertGreater(start["input_tokens"], 0)
        self.assertEqual(start["cache_read_input_tokens"], 0)
        # The heartbeat that kept the stream open came before it.
        self.assertEqual(events[0][0], "message_start")

    def test_stop_sequences(self):
        # OpenAI: "stop", streamed; the text ends before the sequence.
        r, events = sse("/v1/chat/completions", {
            "model": MODEL, "stream": True, "stop": ["HALT", "never"],
            "messages": [{"role": "user", "content": "sa alpha HALT omega"}]})
        chunks = [d for _, d in events if d != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content", "")
                       for c in chunks if c["choices"])
        seq = last_record("sa alpha")["seq"]
        self.assertEqual(text, "mock reply #%d: sa alpha " % seq)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
        cid = r.headers["x-ccgate-conversation-id"]
        conv = stack.request("GET", "/api/conversations/" + cid,
                             key=stack.keys["alice"]).json()
        self.assertEqual(conv["messages"][-1]["content"], text)
        # Anthropic: stop_sequences, and which one ended it.
        r = post("/v1/messages", {
            "model": MODEL, "max_tokens": 100, "stop_sequences": ["omega"],
            "messages": [{"role": "user", "content": "sb alpha omega tail"}]})
        b = r.json()
        self.assertEqual((b["stop_reason"], b["stop_sequence"]),
                         ("stop_sequence", "omega"))
        self.assertEqual(b["content"][0]["text"], "mock reply #%d: sb alpha "
                         % last_record("sb alpha")["seq"])
        # A sequence whose start the answer holds, but not the rest of it:
        # the text held back while it might have been one comes out whole.
        r, events = sse("/v1/messages", {
            "model": MODEL, "max_tokens": 100, "stream": True,
            "stop_sequences": ["tail end"],
            "messages": [{"role": "user", "content": "sc tail piece"}]})
        text = "".join(d["delta"]["text"] for n, d in events
                       if n == "content_block_delta")
        self.assertEqual(text, last_record("sc tail")["response"]["text"])
        delta = [d for n, d in events if n == "message_delta"][0]["delta"]
        self.assertEqual((delta["stop_reason"], delta["stop_sequence"]),
                         ("end_turn", None))
        for body in ({"stop": 7}, {"stop": ["a", "b", "c", "d", "e"]},
                     {"stop": [""]}):
            r = post("/v1/chat/completions", dict(body, model=MODEL, messages=[
                {"role": "user", "content": "x"}]))
            self.assertEqual(r.status, 400, body)
            self.assertTrue(r.json()["error"]["message"].startswith("stop"))

    def test_fields_not_applied_are_named_or_refused(self):
        r = post("/v1/chat/completions", {
            "model": MODEL, "seed": 1, "prediction": {"type": "content"},
            "frobnicate": True, "user": "u1",
            "messages": [{"role": "user", "content": "ig one"}]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers["x-ccgate-ignored"],
                         "seed, prediction, frobnicate, user")
        r = post("/v1/messages", {
            "model": MODEL, "max_tokens": 20, "context_management": {},
            "temperature": 0.1, "stop_sequences": ["zzz"],
            "messages": [{"role": "user", "content": "ig two"}]})
        self.assertEqual(r.headers["x-ccgate-ignored"],
                         "context_management, temperature")
        for body in ({"audio": {"voice": "alloy"}},
                     {"modalities": ["text", "audio"]}):
            r = post("/v1/chat/completions", dict(body, model=MODEL, messages=[
                {"role": "user", "content": "x"}]))
            self.assertEqual(r.status, 400, body)
            self.assertTrue(r.json()["error"]["message"].startswith(
                next(iter(body))))

    def test_no_tools_is_not_a_tool(self):
        r = post("/v1/chat/completions", {
            "model": MODEL, "tools": [], "tool_choice": "none",
            "parallel_tool_calls": False,
            "messages": [{"role": "user", "content": "nt one"}]})
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("tools", r.headers.get("x-ccgate-ignored", ""))
        r = post("/v1/messages", {
            "model": MODEL, "max_tokens": 20, "tools": [],
            "tool_choice": {"type": "auto"},
            "messages": [{"role": "user", "content": "nt two"}]})
        self.assertEqual(r.status, 200, r)
        r = post("/v1/messages", {
            "model": MODEL, "max_tokens": 20, "tools": [],
            "tool_choice": {"type": "any"},
            "messages": [{"role": "user", "content": "nt three"}]})
        self.assertEqual(r.status, 400, r)
        self.assertTrue(r.json()["error"]["message"].startswith("tool_choice"))

    def test_models_in_the_clients_shape(self):
        r = stack.request("GET", "/v1/models", key=stack.keys["alice"],
                          headers={"anthropic-version": "2023-06-01"})
        b = r.json()
        self.assertEqual([m["id"] for m in b["data"]],
                         [MODEL, "claude-haiku-4-5"])
        self.assertEqual({m["type"] for m in b["data"]}, {"model"})
        self.assertTrue(all(m["display_name"] and m["created_at"]
                            for m in b["data"]))
        self.assertEqual((b["has_more"], b["first_id"], b["last_id"]),
                         (False, MODEL, "claude-haiku-4-5"))
        r = stack.request("GET", "/v1/models/" + MODEL, key=stack.keys["alice"])
        self.assertEqual(r.json()["object"], "model")
        r = stack.request("GET", "/v1/models/" + MODEL, key=stack.keys["alice"],
                          headers={"anthropic-version": "2023-06-01"})
        self.assertEqual((r.json()["type"], r.json()["id"]), ("model", MODEL))
        r = stack.request("GET", "/v1/models/claude-nope",
                          key=stack.keys["alice"])
        self.assertEqual(r.status, 404)
        out = sdk("anthropic", "models")
        self.assertEqual(out["ids"], [MODEL, "claude-haiku-4-5"])
        self.assertEqual(out["one"], MODEL)


# A 1x1 PNG.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
       "hQGAhKmMIQAAAABJRU5ErkJggg==")


def upstream_blocks(rec):
    """The content blocks of the last user message the upstream got (less
    the CLI's reminders and cache marks)."""
    content = rec["body"]["messages"][-1]["content"]
    return [{k: v for k, v in b.items() if k != "cache_control"}
            for b in content if not (b.get("type") == "text" and
                                     b["text"].startswith(
                                         ("<system-", "[Image: source:")))]


class Images(unittest.TestCase):
    def test_openai_data_url_reaches_the_model(self):
        msg = {"role": "user", "content": [
            {"type": "text", "text": "img what is this"},
            {"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + PNG, "detail": "low"}}]}
        r = post("/v1/chat/completions", {"model": MODEL, "messages": [msg]})
        self.assertEqual(r.status, 200, r)
        rec = last_record("img what is this")
        self.assertEqual(upstream_blocks(rec), [
            {"type": "text", "text": "img what is this"},
            {"type": "image", "source": {"type": "base64",
                                         "media_type": "image/png",
                                         "data": PNG}}])
        # Stored: a placeholder with the type, not the bytes.
        cid = r.headers["x-ccgate-conversation-id"]
        conv = stack.request("GET", "/api/conversations/" + cid,
                             key=stack.keys["alice"]).json()
        stored = conv["messages"][0]["content"]
        self.assertIn("[image image/png", stored)
        self.assertNotIn(PNG, stored)
        # The history with the image in it continues that conversation.
        reply = r.json()["choices"][0]["message"]["content"]
        r2 = post("/v1/chat/completions", {"model": MODEL, "messages": [
            msg, {"role": "assistant", "content": reply},
            {"role": "user", "content": "img and now?"}]})
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.headers["x-ccgate-conversation-id"], cid)

    def test_anthropic_base64_block_reaches_the_model(self):
        r = post("/v1/messages", {"model": MODEL, "max_tokens": 50,
                                  "messages": [{"role": "user", "content": [
                                      {"type": "image", "source": {
                                          "type": "base64",
                                          "media_type": "image/png",
                                          "data": PNG}},
                                      {"type": "text",
                                       "text": "/img describe"}]}]})
        self.assertEqual(r.status, 200, r)
        rec = last_record("img describe")
        blocks = upstream_blocks(rec)
        self.assertEqual(blocks[0]["source"]["data"], PNG)
        # A leading '/' is text, not a command, in a block too.
        # (Newer CLIs end the last block with a newline.)
        self.assertEqual(blocks[1]["type"], "text")
        self.assertEqual(blocks[1]["text"].rstrip("\n"), " /img describe")

    def test_refused_images(self):
        for part, field in (
                ({"type": "image_url", "image_url": {
                    "url": "https://example.com/cat.png"}},
                 "only data: URLs"),
                ({"type": "image_url", "image_url": {
                    "url": "data:image/bmp;base64," + PNG}}, "media type"),
                ({"type": "image_url", "image_url": {
                    "url": "data:image/png;base64,not base64!"}}, "base64")):
            r = post("/v1/chat/completions", {"model": MODEL, "messages": [
                {"role": "user", "content": [part]}]})
            self.assertEqual(r.status, 400, part)
            self.assertIn(field, r.json()["error"]["message"])
            self.assertTrue(r.json()["error"]["message"].startswith(
                "messages[0].content[0]"))
        r = post("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {
                "type": "url", "url": "https://example.com/cat.png"}}]}]})
        self.assertEqual(r.status, 400)
        self.assertIn("fetches nothing", r.json()["error"]["message"])
        # An image in the assistant's turn is not something a model wrote.
        r = post("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "image", "source": {
                "type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"role": "user", "content": "y"}]})
        self.assertEqual(r.status, 400)


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"]}


def oa_tools(*names):
    return [{"type": "function", "function": {
        "name": n, "description": "Look up " + n, "parameters": WEATHER}}
        for n in names]


def an_tools(*names):
    return [{"name": n, "description": "Look up " + n,
             "input_schema": WEATHER} for n in names]


class Tools(unittest.TestCase):
    """The client's own tools: the model calls them, the client runs them
    and sends the results, and the same turn goes on, on the same CLI."""

    def test_openai_round_trip(self):
        first = {"role": "user", "content":
                 'to weather [[mock:tool=get_weather {"city": "Paris"}]]'}
        r = post("/v1/chat/completions", {
            "model": MODEL, "tools": oa_tools("get_weather", "get_time"),
            "messages": [first]})
        self.assertEqual(r.status, 200, r)
        b = r.json()
        choice = b["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        calls = choice["message"]["tool_calls"]
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0]["type"], "function")
        self.assertEqual(calls[0]["function"]["name"], "get_weather")
        self.assertEqual(json.loads(calls[0]["function"]["arguments"]),
                         {"city": "Paris"})
        # The upstream was offered the client's tools under their names.
        rec = last_record("to weather")
        self.assertEqual(sorted(t["name"] for t in rec["body"]["tools"]),
                         ["get_time", "get_weather"])
        cid = r.headers["x-ccgate-conversation-id"]
        placed = stack.stats()["placed"]
        r2 = post("/v1/chat/completions", {
            "model": MODEL, "tools": oa_tools("get_weather", "get_time"),
            "messages": [first, choice["message"],
                         {"role": "tool", "tool_call_id": calls[0]["id"],
                          "content": "sunny, 21C"}]})
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.headers["x-ccgate-conversation-id"], cid)
        b2 = r2.json()["choices"][0]
        self.assertEqual(b2["finish_reason"], "stop")
        self.assertTrue(b2["message"]["content"].endswith(
            "tool result: sunny, 21C"), b2)
        # The same turn, on the same process: no new session, no priming.
        after = stack.stats()["placed"]
        self.assertEqual(after["bound"], placed["bound"] + 1)
        self.assertEqual(after["spawned"] + after["resumed"],
                         placed["spawned"] + placed["resumed"])
        res = [x for x in stack.mock_records()
               if "tool_result" in json.dumps(x["body"]["messages"][-1])
               and "sunny, 21C" in json.dumps(x["body"]["messages"][-1])]
        self.assertEqual(len(res), 1)
        last = res[0]["body"]["messages"]
        self.assertEqual(last[-2]["role"], "assistant")
        self.assertEqual([c["id"] for c in last[-2]["content"]
                          if c["type"] == "tool_use"], [calls[0]["id"]])

    def test_anthropic_stream_parallel_calls_and_an_error(self):
        first = {"role": "user", "content":
                 'ta two [[mock:tool=get_weather {"city": "Oslo"}]] '
                 '[[mock:tool=get_time {"city": "Oslo"}]]'}
        r, events = sse("/v1/messages", {
            "model": MODEL, "max_tokens": 200, "stream": True,
            "tools": an_tools("get_weather", "get_time"),
            "messages": [first]})
        self.assertEqual(r.status, 200)
        names = [n for n, _ in events]
        self.assertEqual(names[-2:], ["message_delta", "message_stop"])
        self.assertEqual(events[-2][1]["delta"]["stop_reason"], "tool_use")
        starts = [d["content_block"] for n, d in events
                  if n == "content_block_start" and
                  d["content_block"]["type"] == "tool_use"]
        self.assertEqual([s["name"] for s in starts],
                         ["get_weather", "get_time"])
        inputs = [json.loads(d["delta"]["partial_json"]) for n, d in events
                  if n == "content_block_delta" and
                  d["delta"]["type"] == "input_json_delta"]
        self.assertEqual(inputs, [{"city": "Oslo"}, {"city": "Oslo"}])
        text = "".join(d["delta"]["text"] for n, d in events
                       if n == "content_block_delta" and
                       d["delta"]["type"] == "text_delta")
        assistant = {"role": "assistant", "content": [
            {"type": "text", "text": text}] + [
            {"type": "tool_use", "id": s["id"], "name": s["name"],
             "input": i} for s, i in zip(starts, inputs)]}
        r2 = post("/v1/messages", {
            "model": MODEL, "max_tokens": 200,
            "tools": an_tools("get_weather", "get_time"),
            "messages": [first, assistant, {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": starts[0]["id"],
                 "content": "snow"},
                {"type": "tool_result", "tool_use_id": starts[1]["id"],
                 "content": [{"type": "text", "text": "no clock"}],
                 "is_error": True}]}]})
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.headers["x-ccgate-conversation-id"],
                         r.headers["x-ccgate-conversation-id"])
        b = r2.json()
        self.assertEqual(b["stop_reason"], "end_turn")
        self.assertIn("snow", b["content"][0]["text"])
        self.assertIn("no clock", b["content"][0]["text"])
        rec = [x for x in stack.mock_records()
               if "no clock" in json.dumps(x["body"]["messages"][-1])][-1]
        results = {c["tool_use_id"]: c for c in
                   rec["body"]["messages"][-1]["content"]
                   if c.get("type") == "tool_result"}
        self.assertTrue(results[starts[1]["id"]].get("is_error"))
        self.assertFalse(results[starts[0]["id"]].get("is_error", False))

    def test_official_sdks(self):
        out = sdk("openai", "tools", {
            "prompt": 'so w [[mock:tool=get_weather {"city": "Rome"}]] '
                      '[[mock:tool=get_time {"city": "Rome"}]]',
            "tools": oa_tools("get_weather", "get_time"),
            "results": {"get_weather": "hot", "get_time": "noon"}})
        self.assertEqual(out["finish"], "tool_calls")
        self.assertEqual(out["calls"], [["get_weather", {"city": "Rome"}],
                                        ["get_time", {"city": "Rome"}]])
        self.assertEqual(out["final_finish"], "stop")
        # Calls run at once: their results come back in either order.
        self.assertIn(out["text"].split("tool result: ")[1],
                      ("hot noon", "noon hot"), out)
        out = sdk("anthropic", "tools", {
            "prompt": 'sa w [[mock:tool=get_weather {"city": "Lima"}]]',
            "tools": an_tools("get_weather"),
            "results": {"get_weather": "mild"}})
        self.assertEqual((out["stop_reason"], out["final_stop"]),
                         ("tool_use", "end_turn"))
        self.assertEqual(out["calls"], [["get_weather", {"city": "Lima"}]])
        self.assertTrue(out["text"].endswith("tool result: mild"), out)

    def test_vercel_ai_sdk_runs_its_tools(self):
        for provider in ("anthropic", "openai"):
            for mode in ("generate", "stream"):
                word = "vt%s%s" % (provider[:2], mode[:2])
                out = aisdk(provider, mode, {
                    "tools": ["get_weather"],
                    "results": {"get_weather": "windy " + word},
                    "messages": [{"role": "user", "content": word +
                                  ' [[mock:tool=get_weather {"city": "Nuuk"}]]'}]})
                self.assertEqual(out["ran"], [["get_weather",
                                               {"city": "Nuuk"}]], out)
                self.assertTrue(out["text"].endswith(
                    "tool result: windy " + word), out)
                self.assertEqual(out["finishReason"], "stop", out)

    def test_late_results_prime_a_new_session(self):
        """Results that come after tool_park_ms: the waiting turn was
        dropped (its process killed), and the conversation goes on in a
        new session primed with what was said, the tool exchange in it."""
        first = {"role": "user", "content":
                 'tl late [[mock:tool=get_weather {"city": "Kyiv"}]]'}
        r = post("/v1/chat/completions", {
            "model": MODEL, "tools": oa_tools("get_weather"),
            "messages": [first]})
        msg = r.json()["choices"][0]["message"]
        call = msg["tool_calls"][0]
        cid = r.headers["x-ccgate-conversation-id"]
        parked = [p for p in stack.stats()["processes"]
                  if p.get("conversation") == cid]
        self.assertEqual(len(parked), 1)
        wait_for(lambda: not [p for p in stack.stats()["processes"]
                              if p.get("conversation") == cid],
                 PARK_MS / 1000 + 15, "the parked process to be dropped")
        r2 = post("/v1/chat/completions", {
            "model": MODEL, "tools": oa_tools("get_weather"),
            "messages": [first, msg, {"role": "tool", "tool_call_id":
                                      call["id"], "content": "frosty"}]})
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.headers["x-ccgate-conversation-id"], cid)
        sent = texts_of([x for x in stack.mock_records()
                         if "frosty" in json.dumps(x["body"])][-1])[-1][1]
        self.assertIn("tl late", sent)
        self.assertIn("[tool_use %s get_weather" % call["id"], sent)
        self.assertIn("frosty", sent)

    def test_with_the_clis_own_tools_on(self):
        """A key with allow_tools: the CLI has its own Bash, and a client
        tool of that name stays the client's (the model sees it under the
        MCP prefix; the client, under its own name)."""
        if "tooler" not in stack.keys:
            out = stack.admin("key", "create", "--name", "tooler", "--user",
                              "tooler", "--tools", "yes", "--json")
            stack.keys["tooler"] = json.loads(out.stdout)["key"]
        tools = oa_tools("Bash")
        first = {"role": "user", "content":
                 'tb [[mock:tool=ccgate__Bash {"city": "here"}]]'}
        r = post("/v1/chat/completions", {"model": MODEL, "tools": tools,
                                          "messages": [first]}, key="tooler")
        self.assertEqual(r.status, 200, r)
        msg = r.json()["choices"][0]["message"]
        self.assertEqual([c["function"]["name"] for c in msg["tool_calls"]],
                         ["Bash"])
        rec = last_record("tb [[mock")
        names = [t["name"] for t in rec["body"]["tools"]]
        self.assertIn("Bash", names)
        self.assertIn("mcp__ccgate__Bash", names)
        r2 = post("/v1/chat/completions", {"model": MODEL, "tools": tools,
                                           "messages": [first, msg, {
                                               "role": "tool",
                                               "tool_call_id": msg[
                                                   "tool_calls"][0]["id"],
                                               "content": "ran client-side"}]},
                  key="tooler")
        self.assertEqual(r2.status, 200, r2)
        self.assertTrue(r2.json()["choices"][0]["message"]["content"]
                        .endswith("tool result: ran client-side"), r2)

    def test_refused_tools(self):
        for tools, why in (
                ([{"type": "function", "function": {"name": "bad name"}}],
                 "tools[0].name"),
                (oa_tools("a") + oa_tools("a"), "tools[1].name"),
                ([{"type": "web_search_preview"}], "tools[0]")):
            r = post("/v1/chat/completions", {"model": MODEL, "tools": tools,
                                              "messages": [{"role": "user",
                                                            "content": "x"}]})
            self.assertEqual(r.status, 400, tools)
            self.assertTrue(r.json()["error"]["message"].startswith(why), r)
        for choice in ({"type": "function", "function": {"name": "zz"}},
                       "sometimes"):
            r = post("/v1/chat/completions", {
                "model": MODEL, "tools": oa_tools("a"), "tool_choice": choice,
                "messages": [{"role": "user", "content": "x"}]})
            self.assertEqual(r.status, 400, choice)
            self.assertTrue(r.json()["error"]["message"].startswith(
                "tool_choice"))
        r = post("/v1/chat/completions", {
            "model": MODEL, "tool_choice": "required",
            "messages": [{"role": "user", "content": "x"}]})
        self.assertEqual(r.status, 400)

    def test_a_required_tool_call(self):
        """tool_choice required (OpenAI) or a named tool (Anthropic): a
        model that answers without the call is told, and calls it."""
        r = post("/v1/chat/completions", {
            "model": MODEL, "tools": oa_tools("get_weather", "get_time"),
            "tool_choice": "required",
            "messages": [{"role": "user", "content": "tr just talk"}]})
        self.assertEqual(r.status, 200, r)
        choice = r.json()["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertIn(choice["message"]["tool_calls"][0]["function"]["name"],
                      ("get_weather", "get_time"))
        r = post("/v1/messages", {
            "model": MODEL, "max_tokens": 100,
            "tools": an_tools("get_weather", "get_time"),
            "tool_choice": {"type": "tool", "name": "get_time"},
            "messages": [{"role": "user", "content": "tn just talk"}]})
        self.assertEqual(r.status, 200, r)
        b = r.json()
        self.assertEqual(b["stop_reason"], "tool_use")
        self.assertEqual([c["name"] for c in b["content"]
                          if c["type"] == "tool_use"], ["get_time"])


class ClaudeCodeAsClient(unittest.TestCase):
    """The Claude Code CLI itself, pointed at ccgate with a ccgate key:
    its own tools are the client's tools, run on the client's side."""

    def run_claude(self, prompt, cwd, *args):
        home = os.path.join(cwd, ".home")
        os.makedirs(home, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "HOME": home, "LANG": "C.UTF-8",
               "ANTHROPIC_BASE_URL": "https://127.0.0.1:%d" % stack.port,
               "ANTHROPIC_API_KEY": stack.keys["alice"],
               "NODE_EXTRA_CA_CERTS": stack.path("tls.crt"),
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "DISABLE_AUTOUPDATER": "1"}
        return subprocess.run([CLAUDE, "-p", prompt, "--model", MODEL] +
                              list(args), cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=180)

    def test_hi(self):
        d = stack.path("cc-hi")
        os.makedirs(d, exist_ok=True)
        r = self.run_claude("cc hi", d)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assertIn("cc hi", r.stdout)

    def test_two_of_its_own_tool_calls(self):
        d = stack.path("cc-tools")
        os.makedirs(d, exist_ok=True)
        for name, text in (("a.txt", "apricot"), ("b.txt", "blueberry")):
            with open(os.path.join(d, name), "w") as f:
                f.write(text + "\n")
        r = self.run_claude(
            'cc read both [[mock:tool=Read {"file_path": "%s/a.txt"}]] '
            '[[mock:tool=Read {"file_path": "%s/b.txt"}]]' % (d, d), d,
            "--allowedTools", "Read")
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        # The mock quotes the results the client's Read produced.
        self.assertIn("apricot", r.stdout)
        self.assertIn("blueberry", r.stdout)
        rec = [x for x in stack.mock_records()
               if "apricot" in json.dumps(x["body"]["messages"][-1])][-1]
        self.assertIn("Read", [t["name"] for t in rec["body"]["tools"]])


PERSON = {"type": "object", "properties": {"name": {"type": "string"}},
          "required": ["name"]}


class StructuredOutput(unittest.TestCase):
    """A JSON schema for the answer: the CLI's structured output, given
    the schema on its stdin (never on argv, which local users can read)."""

    def test_openai_json_schema(self):
        r = post("/v1/chat/completions", {
            "model": MODEL, "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON}},
            "messages": [{"role": "user", "content":
                          'so person [[mock:tool=StructuredOutput '
                          '{"name": "Ada"}]]'}]})
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("response_format",
                         r.headers.get("x-ccgate-ignored", ""))
        b = r.json()["choices"][0]
        self.assertEqual(json.loads(b["message"]["content"]), {"name": "Ada"})
        self.assertEqual(b["finish_reason"], "stop")
        rec = last_record("so person")
        self.assertEqual([t["name"] for t in rec["body"]["tools"]],
                         ["StructuredOutput"])
        self.assertEqual(rec["body"]["tools"][0]["input_schema"]["required"],
                         ["name"])
        # The schema is nowhere on a command line.
        for p in stack.stats()["processes"]:
            pid = p.get("sandbox_pid") or p.get("pid")
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    self.assertNotIn(b"required", f.read())
            except FileNotFoundError:
                pass

    def test_anthropic_output_format_streamed(self):
        r, events = sse("/v1/messages", {
            "model": MODEL, "max_tokens": 200, "stream": True,
            "output_format": {"type": "json_schema", "schema": PERSON},
            "messages": [{"role": "user", "content":
                          'sa person [[mock:tool=StructuredOutput '
                          '{"name": "Grace"}]]'}]})
        self.assertEqual(r.status, 200)
        text = "".join(d["delta"]["text"] for n, d in events
                       if n == "content_block_delta")
        self.assertEqual(json.loads(text), {"name": "Grace"})
        delta = [d for n, d in events if n == "message_delta"][0]
        self.assertEqual(delta["delta"]["stop_reason"], "end_turn")

    def test_refused_formats(self):
        for rf in ({"type": "json_schema"}, {"type": "json_schema",
                                              "json_schema": {"schema": 7}},
                   {"type": "yaml"}):
            r = post("/v1/chat/completions", {
                "model": MODEL, "response_format": rf,
                "messages": [{"role": "user", "content": "x"}]})
            self.assertEqual(r.status, 400, rf)
            self.assertTrue(r.json()["error"]["message"].startswith(
                "response_format"))


class CountTokens(unittest.TestCase):
    def test_the_upstreams_count_through_the_egress(self):
        before = len(stack.egress_log())
        body = {"model": MODEL, "system": "be brief",
                "messages": [{"role": "user",
                              "content": "count these four words"}],
                "tools": [], "metadata": {"user_id": "u"}}
        r = post("/v1/messages/count_tokens", body,
                 headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 200, r)
        # The mock counts the words of the messages and the system prompt.
        self.assertEqual(r.json(), {"input_tokens": 6})
        self.assertEqual(r.headers["x-ccgate-ignored"], "metadata")
        log = stack.egress_log()[before:]
        counts = [e for e in log if "count_tokens" in e.get("uri", "")]
        self.assertEqual(len(counts), 1, log)
        self.assertEqual(counts[0]["tenant"], "alice")
        self.assertEqual(counts[0]["status"], 200)
        # The SDK's own call.
        out = sdk("anthropic", "count", [{"role": "user",
                                          "content": "two words"}])
        self.assertEqual(out["input_tokens"], 2)

    def test_refused_counts(self):
        r = post("/v1/messages/count_tokens", {"model": MODEL, "messages": []})
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["type"], "error")
        r = post("/v1/messages/count_tokens", {"model": "claude-nope",
                                               "messages": [{"role": "user",
                                                             "content": "x"}]})
        self.assertEqual(r.status, 400, r)
        r = stack.request("POST", "/v1/messages/count_tokens",
                          {"model": MODEL, "messages": [
                              {"role": "user", "content": "x"}]})
        self.assertEqual(r.status, 401)


def aisdk(provider, mode, opts):
    env = dict(os.environ, CCGATE_URL="https://127.0.0.1:%d" % stack.port,
               CCGATE_KEY=stack.keys["alice"], CCGATE_CLIENTS=CLIENTS,
               NODE_EXTRA_CA_CERTS=stack.path("tls.crt"))
    r = subprocess.run(["node", os.path.join(SRCDIR, "tests", "integration",
                                             "sdk", "aisdk_client.cjs"),
                        provider, mode, json.dumps(opts)],
                       capture_output=True, text=True, env=env, timeout=120)
    if r.returncode != 0:
        raise AssertionError("ai %s %s failed: %s" % (provider, mode, r.stderr))
    return json.loads(r.stdout)


class VercelAISDK(unittest.TestCase):
    """The AI SDK's Anthropic and OpenAI providers, as agents use them."""

    def test_generate_and_stream_with_both_providers(self):
        for provider in ("anthropic", "openai"):
            for mode in ("generate", "stream"):
                word = "ai%s%s" % (provider[:2], mode[:2])
                out = aisdk(provider, mode, {"messages": [
                    {"role": "user", "content": word + " hello"}]})
                self.assertEqual(out["text"],
                                 last_record(word)["response"]["text"], out)
                self.assertEqual(out["finishReason"], "stop", out)
                self.assertGreater(out["usage"]["inputTokens"], 0, out)

    def test_image_stop_sequence_and_length(self):
        for provider in ("anthropic", "openai"):
            word = "aiimg" + provider[:2]
            out = aisdk(provider, "generate", {
                "stopSequences": ["BREAK"],
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": word + " one BREAK two"},
                    {"type": "image", "image": PNG,
                     "mediaType": "image/png"}]}]})
            rec = last_record(word)
            self.assertEqual(upstream_blocks(rec)[1]["source"]["data"], PNG)
            self.assertEqual(out["text"], "mock reply #%d: %s one " %
                             (rec["seq"], word))
            self.assertEqual(out["finishReason"], "stop")
            out = aisdk(provider, "stream", {
                "maxOutputTokens": 2, "messages": [
                    {"role": "user", "content": word + " cut here now"}]})
            self.assertEqual(out["text"], "mock reply")
            self.assertEqual(out["finishReason"], "length")


if __name__ == "__main__":
    main()
