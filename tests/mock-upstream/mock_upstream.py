#!/usr/bin/env python3
"""Mock Anthropic Messages API upstream for ccgate's tests.

The real `claude` CLI is pointed here with ANTHROPIC_BASE_URL.  The mock
answers POST /v1/messages (streaming and not), records every request it
receives, and can be told how to behave, globally or per request:

  POST /_control  {"mode": "normal"|"slow"|"fail"|"hang",
                   "delay_ms": N, "status": N, "text": "...", "chunks": N}
  GET  /_records  every recorded request: {"seq","path","body","response",
                  "auth"} (auth: the x-api-key and authorization headers)
  POST /_reset    forget records and return to normal mode
  POST /_upstream {"mode": "limit"|"rate"|"overloaded"|"auth"|"ok",
                   "count": N, "reset_in": S, "retry_after": S, "skip": K}
                  the account's state for the next N (default 1, -1: until
                  told otherwise) requests to /v1/messages after the next
                  K (default 0) are answered as usual, as the real API
                  answers them: "limit" a plan's usage limit (429
                  rate_limit_error with anthropic-ratelimit-unified-status:
                  rejected and -reset, the epoch S seconds ahead), "rate"
                  a bare 429 with retry-after, "overloaded" 529, "auth" 401
                  authentication_error.  The answer is the state.
  GET  /_upstream the state, how many requests the last POST's state
                  answered ("answered") and how many reached /v1/messages
                  in all ("requests"); of those, ccgate-poold's checks of
                  the account (max_tokens 1, one user message "ping"),
                  which the state answers like any other: "checks" in
                  all, "checks_answered" by the last POST's state

A user message may carry a directive that overrides the global mode for
that request only, e.g. "[[mock:slow=200]]", "[[mock:fail=529]]",
"[[mock:hang]]", "[[mock:chunks=50]]", "[[mock:text=hello]]".
"[[mock:hold=NAME]]" holds the answer until POST /_release {"name": NAME}
(GET /_held lists the names of answers held now), so a test can act while
a turn is in flight and let it end after.
"[[mock:bash=COMMAND]]", "[[mock:read=PATH]]" and "[[mock:write=PATH
CONTENT]]" (CONTENT is what follows the first space) answer as a model
that calls the CLI's Bash, Read or Write tool (stop_reason "tool_use");
several call several tools, in one answer; the CLI's next request
carries their tool_result, which the mock answers with text.
"[[mock:tool=NAME {json}]]" calls the tool of the request's "tools" named
NAME, or whose name ends with "__NAME" (an MCP tool), with that JSON as
its input (no brackets inside); several call several tools, in one answer.
A message of ccgate's that requires a tool call is answered with a call
to that tool (or the first), input {"forced": true}.
Tool results are answered with text that quotes them:
"mock reply #<n>: tool result: <their texts>".

With --credential K it answers 401 (authentication_error) to any request
that does not carry K as x-api-key or as "authorization: Bearer K", as the
real API would; tests then know that only the egress, which holds K, can
have sent what it answered.

Answers are deterministic: the reply is "mock reply #<n>: <last user text>"
and usage counts words, so tests can compare what ccgate recorded with what
the mock answered (kept in each record's "response").  A word is a token:
an answer longer than the request's max_tokens stops there, with
stop_reason "max_tokens", as the real API's would.
"""

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"mode": "normal", "delay_ms": 0, "status": 500, "text": None,
         "chunks": 0}
RECORDS = []
HELD = {}       # [[mock:hold=NAME]]: name -> threading.Event
WAITING = set()  # names of answers held now
# The account-wide state POST /_upstream sets (not per message: a tenant's
# text cannot change it).
UPSTREAM = {"mode": "ok", "count": 0, "reset_in": 60, "retry_after": 5,
            "reset": None, "answered": 0, "requests": 0, "checks": 0,
            "checks_answered": 0}
CREDENTIAL = None
DIRECTIVE = re.compile(r"\[\[mock:([a-z]+)(?:=([^\]]*))?\]\]")


def user_text(msg):
    """Return the plain text of one message's content."""
    content = msg.get("content")
    if isinstance(content, str):
        return content
    out = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                out.append(block.get("text", ""))
    return "\n".join(out)


REMINDER = re.compile(r"\s*<system-reminder>.*?</system-reminder>\s*", re.S)


def cli_note(text):
    """Whether a text block is the CLI's, not the user's: a reminder, or
    where the CLI saved an image (newer CLIs)."""
    return text.startswith(("<system-reminder>", "[Image: source:"))


def last_user_text(body):
    """Return the last user turn's text, without CLI reminders."""
    for msg in reversed(body.get("messages", [])):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, list):
            texts = [b.get("text", "") for b in content
                     if isinstance(b, dict) and b.get("type") == "text"
                     and not cli_note(b.get("text", ""))]
            if texts:
                return texts[-1]
        elif isinstance(content, str):
            return content
    return ""


def count_words(body):
    n = 0
    for msg in body.get("messages", []):
        n += len(user_text(msg).split())
    system = body.get("system")
    if isinstance(system, str):
        n += len(system.split())
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, dict):
                n += len(block.get("text", "").split())
    return max(n, 1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ccgate-mock-upstream"

    def setup(self):
        super().setup()
        # A stream's events are small writes: sent at once, as a real
        # server sends them, not held by Nagle for the peer's ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if os.environ.get("MOCK_VERBOSE"):
            sys.stderr.write("mock: " + fmt % args + "\n")

    def _json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def do_GET(self):
        if self.path == "/_upstream":
            with LOCK:
                self._json(200, dict(UPSTREAM))
        elif self.path == "/_records":
            with LOCK:
                self._json(200, list(RECORDS))
        elif self.path == "/_held":
            with LOCK:
                self._json(200, sorted(WAITING))
        elif self.path == "/_health":
            self._json(200, {"ok": True})
        else:
            self._json(404, {"type": "error", "error": {
                "type": "not_found_error", "message": self.path}})

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self._body()
        path = self.path.split("?", 1)[0]
        if path == "/_control":
            with LOCK:
                STATE.update(body or {})
            self._json(200, STATE)
            return
        if path == "/_release":
            with LOCK:
                HELD.setdefault(str((body or {}).get("name")),
                                threading.Event()).set()
            self._json(200, {"released": True})
            return
        if path == "/_upstream":
            if not isinstance(body, dict):
                self._json(400, {"error": "bad json"})
                return
            with LOCK:
                upstream_set(body)
                out = dict(UPSTREAM)
            self._json(200, out)
            return
        if path == "/_reset":
            with LOCK:
                RECORDS.clear()
                upstream_set({"mode": "ok"})
                UPSTREAM.update({"answered": 0, "requests": 0, "checks": 0,
                                 "checks_answered": 0})
                STATE.update({"mode": "normal", "delay_ms": 0, "status": 500,
                              "text": None, "chunks": 0})
            self._json(200, {"ok": True})
            return
        if body is None:
            self._json(400, {"type": "error", "error": {
                "type": "invalid_request_error", "message": "bad json"}})
            return
        if path == "/v1/messages/count_tokens":
            if not self.authorized():
                self._json(401, {"type": "error", "error": {
                    "type": "authentication_error",
                    "message": "invalid x-api-key"}})
                return
            self._json(200, {"input_tokens": count_words(body)})
            return
        if path != "/v1/messages":
            self._json(404, {"type": "error", "error": {
                "type": "not_found_error", "message": path}})
            return
        self.messages(body)

    def authorized(self):
        """Whether the request carries the credential (if one is set)."""
        if CREDENTIAL is None:
            return True
        return (self.headers.get("x-api-key") == CREDENTIAL or
                self.headers.get("authorization") == "Bearer " + CREDENTIAL)

    def messages(self, body):
        with LOCK:
            cfg = dict(STATE)
            seq = len(RECORDS) + 1
            record = {"seq": seq, "path": self.path, "time": time.time(),
                      "body": body, "response": None, "auth": {
                          "x-api-key": self.headers.get("x-api-key"),
                          "authorization": self.headers.get("authorization")}}
            RECORDS.append(record)
            UPSTREAM["requests"] += 1
            failure = upstream_take()
            if is_check(body):
                UPSTREAM["checks"] += 1
                if failure is not None:
                    UPSTREAM["checks_answered"] += 1
        if failure is not None:
            record["response"] = {"status": failure[0]}
            self.failure(*failure)
            return
        if not self.authorized():
            record["response"] = {"status": 401}
            self._json(401, {"type": "error", "error": {
                "type": "authentication_error",
                "message": "invalid x-api-key"}})
            return
        text_in = last_user_text(body)
        for name, value in DIRECTIVE.findall(text_in):
            if name in ("slow", "hang", "fail", "drip"):
                cfg["mode"] = name
                if name in ("slow", "drip") and value:
                    cfg["delay_ms"] = int(value)
                if name == "fail" and value:
                    cfg["status"] = int(value)
            elif name == "hold" and value:
                with LOCK:
                    ev = HELD.setdefault(value, threading.Event())
                    WAITING.add(value)
                ev.wait(600)
                with LOCK:
                    WAITING.discard(value)
            elif name == "chunks":
                cfg["chunks"] = int(value)
            elif name == "text":
                cfg["text"] = value
            elif name in ("bash", "read") and not has_tool_result(body):
                cfg.setdefault("tools", []).append(
                    ("Bash", {"command": value}) if name == "bash"
                    else ("Read", {"file_path": value}))
            elif name == "write" and value and not has_tool_result(body):
                path, _, content = value.partition(" ")
                cfg.setdefault("tools", []).append(
                    ("Write", {"file_path": path, "content": content}))
            elif name == "tool" and value and not has_tool_result(body):
                tname, _, args = value.partition(" ")
                for t in body.get("tools") or []:
                    n = t.get("name", "")
                    if n == tname or n.endswith("__" + tname):
                        cfg.setdefault("tools", []).append(
                            (n, json.loads(args or "{}")))
                        break
        # ccgate asking again for the tool call a client required.
        forced = re.search(r"requires a tool call: call (?:the tool (\S+)|"
                           r"one of the client's tools)",
                           json.dumps(body["messages"][-1:]))
        if forced and not has_tool_result(body) and body.get("tools"):
            name = forced.group(1) or body["tools"][0]["name"]
            cfg.setdefault("tools", []).append((name, {"forced": True}))
        if has_tool_result(body) and not cfg["text"]:
            cfg["text"] = "mock reply #%d: tool result: %s" % (
                seq, tool_result_text(body))
        # The CLI asking the model to go on after a max_tokens stop: ccgate
        # interrupts that turn, so what this would answer is never the
        # client's. Answered late, so that the interrupt meets the first of
        # these on a busy host too (the newest CLI does not abort it: held
        # for good, it would hold the conversation's next turn).
        if "Output token limit" in json.dumps(body["messages"][-1:]):
            cfg["mode"], cfg["delay_ms"] = "slow", 5000
        if cfg["mode"] == "hang":
            time.sleep(3600)
            return
        if cfg["mode"] == "fail":
            status = int(cfg.get("status") or 500)
            etype = "overloaded_error" if status == 529 else "api_error"
            record["response"] = {"status": status}
            self._json(status, {"type": "error", "error": {
                "type": etype, "message": "mock upstream failure %d" % status}})
            return
        if cfg["mode"] == "slow" and cfg.get("delay_ms"):
            time.sleep(cfg["delay_ms"] / 1000.0)
        reply = cfg["text"] or ("mock reply #%d: %s" % (seq, text_in.strip()))
        words = reply.split(" ")
        nchunks = int(cfg.get("chunks") or 0)
        if nchunks > 0:
            words = (words * (nchunks // max(len(words), 1) + 1))[:nchunks]
            reply = " ".join(words)
        # As the real API: the answer stops at max_tokens (a word is a
        # token here), with stop_reason "max_tokens".
        stop_reason = "end_turn"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            words = words[:limit]
            reply = " ".join(words)
            stop_reason = "max_tokens"
        usage = {"input_tokens": count_words(body), "output_tokens": len(words),
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        record["response"] = {"status": 200, "text": reply, "usage": usage,
                              "stop_reason": stop_reason}
        model = body.get("model", "claude-mock")
        msg_id = "msg_mock_%d" % seq
        if cfg.get("tools"):
            self.tool_use(body, record, usage, model, msg_id, cfg["tools"])
            return
        if not body.get("stream"):
            self.message(msg_id, model, stop_reason, usage,
                         [{"type": "text", "text": reply}])
            return
        drip = cfg["mode"] == "drip" and cfg.get("delay_ms")
        try:
            event = self.start_stream(msg_id, model, usage)
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                if drip:
                    time.sleep(cfg["delay_ms"] / 1000.0)
                event("content_block_delta", {
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}})
            event("content_block_stop", {"type": "content_block_stop",
                                         "index": 0})
            end_stream(event, stop_reason, len(words))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def failure(self, status, headers, body):
        """An error answer with its headers, as the real API sends it."""
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_mock_upstream")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def message(self, msg_id, model, stop_reason, usage, content):
        """A whole (not streamed) answer."""
        self._json(200, {
            "id": msg_id, "type": "message", "role": "assistant",
            "model": model, "stop_reason": stop_reason,
            "stop_sequence": None, "usage": usage, "content": content})

    def start_stream(self, msg_id, model, usage):
        """Send a stream's headers, its message_start and the start of its
        text block (index 0); return a function that sends an event."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(name, data):
            self.wfile.write(("event: %s\ndata: %s\n\n" %
                              (name, json.dumps(data))).encode())
            self.wfile.flush()
        event("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": dict(usage, output_tokens=1)}})
        event("content_block_start", {"type": "content_block_start",
                                      "index": 0, "content_block": {
                                          "type": "text", "text": ""}})
        return event

    def tool_use(self, body, record, usage, model, msg_id, tools):
        """Answer as a model that calls tools: (name, input) each, in
        that order, after a sentence of text."""
        text = "Let me use %s." % ", ".join(t for t, _ in tools)
        blocks = [{"type": "tool_use",
                   "id": "toolu_mock_%d_%d" % (record["seq"], i),
                   "name": tool, "input": args}
                  for i, (tool, args) in enumerate(tools)]
        usage = dict(usage, output_tokens=len(text.split()) + len(tools))
        record["response"] = {"status": 200, "text": text, "usage": usage,
                              "tool_use": blocks[0], "tool_uses": blocks}
        if not body.get("stream"):
            self.message(msg_id, model, "tool_use", usage,
                         [{"type": "text", "text": text}] + blocks)
            return
        try:
            event = self.start_stream(msg_id, model, usage)
            event("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}})
            event("content_block_stop", {"type": "content_block_stop",
                                         "index": 0})
            for i, block in enumerate(blocks, 1):
                event("content_block_start", {
                    "type": "content_block_start", "index": i,
                    "content_block": dict(block, input={})})
                event("content_block_delta", {
                    "type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta",
                              "partial_json": json.dumps(block["input"])}})
                event("content_block_stop", {"type": "content_block_stop",
                                             "index": i})
            end_stream(event, "tool_use", usage["output_tokens"])
        except (BrokenPipeError, ConnectionResetError):
            pass


def is_check(body):
    """Whether a request is ccgate-poold's check of the account."""
    msgs = body.get("messages")
    return (body.get("max_tokens") == 1 and isinstance(msgs, list) and
            len(msgs) == 1 and isinstance(msgs[0], dict) and
            msgs[0].get("content") == "ping")


def upstream_set(body):
    """Set the account's state (LOCK held)."""
    mode = body.get("mode", "ok")
    if mode not in ("ok", "limit", "rate", "overloaded", "auth"):
        mode = "ok"
    UPSTREAM["mode"] = mode
    UPSTREAM["answered"] = 0
    UPSTREAM["checks_answered"] = 0
    UPSTREAM["count"] = int(body.get("count", 1)) if mode != "ok" else 0
    UPSTREAM["skip"] = int(body.get("skip", 0))
    UPSTREAM["reset_in"] = float(body.get("reset_in", 60))
    UPSTREAM["retry_after"] = int(body.get("retry_after", 5))
    UPSTREAM["reset"] = (int(time.time() + UPSTREAM["reset_in"] + 0.999)
                         if mode == "limit" else None)


def upstream_take():
    """The failure the account's state makes of this request, as (status,
    headers, body), or None (LOCK held)."""
    mode = UPSTREAM["mode"]
    if mode == "ok" or UPSTREAM["count"] == 0:
        return None
    if UPSTREAM.get("skip", 0) > 0:
        UPSTREAM["skip"] -= 1
        return None
    if UPSTREAM["count"] > 0:
        UPSTREAM["count"] -= 1
    UPSTREAM["answered"] += 1
    if mode == "limit":
        reset = UPSTREAM["reset"]
        # As Anthropic answers a subscription whose plan limit is spent.
        return (429, [
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", str(reset)),
            ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
            ("anthropic-ratelimit-unified-5h-status", "rejected"),
            ("anthropic-ratelimit-unified-5h-reset", str(reset)),
            ("anthropic-ratelimit-unified-5h-utilization", "1.0"),
            ("anthropic-ratelimit-unified-fallback", "unavailable"),
            ("anthropic-ratelimit-unified-overage-status", "rejected"),
            ("anthropic-ratelimit-unified-overage-disabled-reason",
             "org_level_disabled"),
            ("retry-after", str(max(int(reset - time.time()), 1)))],
            {"type": "error", "error": {
                "type": "rate_limit_error",
                "message": "This request would exceed your account's rate "
                           "limit. Please try again later."}})
    if mode == "rate":
        return (429, [("retry-after", str(UPSTREAM["retry_after"]))],
                {"type": "error", "error": {
                    "type": "rate_limit_error",
                    "message": "Number of request tokens has exceeded your "
                               "per-minute rate limit"}})
    if mode == "overloaded":
        return (529, [], {"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}})
    return (401, [], {"type": "error", "error": {
        "type": "authentication_error",
        "message": "OAuth token has expired. Please obtain a new token or "
                   "refresh your existing token."}})


def end_stream(event, stop_reason, output_tokens):
    """A stream's closing events."""
    event("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens}})
    event("message_stop", {"type": "message_stop"})


def tool_result_text(body):
    """The text of the last message's tool_result blocks."""
    out = []
    for b in body["messages"][-1]["content"]:
        if isinstance(b, dict) and b.get("type") == "tool_result":
            c = b.get("content")
            if isinstance(c, str):
                out.append(c)
            elif isinstance(c, list):
                out.extend(x.get("text", "") for x in c
                           if isinstance(x, dict) and x.get("type") == "text"
                           and not cli_note(x.get("text", "")))
    # Newer CLIs add a reminder to the last result: not the tool's words.
    return " ".join(REMINDER.sub("", t).strip() for t in out)


def has_tool_result(body):
    """Whether the last message carries a tool_result (the CLI answering a
    tool call): then the model's turn goes on with text."""
    msgs = body.get("messages") or [{}]
    content = msgs[-1].get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result"
        for b in content)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the bound port here")
    ap.add_argument("--credential", help="the one API key or OAuth token "
                    "accepted (default: any)")
    args = ap.parse_args()
    global CREDENTIAL
    CREDENTIAL = args.credential
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 1024
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    port = srv.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    else:
        print(port, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
