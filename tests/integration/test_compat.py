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
from harness import Stack, SRCDIR, texts_of, main  # noqa: E402

stack = None
CLIENTS = None
MODEL = "claude-sonnet-4-5"


def setUpModule():
    global stack, CLIENTS
    CLIENTS = subprocess.run([os.path.join(SRCDIR, "deploy",
                                           "install-test-clients")],
                             check=True, capture_output=True,
                             text=True).stdout.strip()
    stack = Stack(name="compat").start()
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


if __name__ == "__main__":
    main()
