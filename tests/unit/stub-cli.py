#!/usr/bin/env python3
"""A stand-in for the claude CLI in stream-json mode, for check_pool: it
reads one user line a turn and answers at once with the lines ccgate-poold
reads (system/init, a text block, a delta, the result), unless the
message asks otherwise:

  silent      nothing at all, not even system/init
  hang        system/init, then nothing
  stall       one delta, then nothing
  slow        the answer after 300 ms
  crash       exit with status 3 before answering
  crash-once  crash the first time in this HOME, answer after that
  model=M     say model M in system/init
  maxtokens   stop at max_tokens, then go on as the CLI does (one more
              delta) until an interrupt comes on stdin
  pieces: A B the answer's deltas are "echo: ", then A, B, ... ('_' is
              a space)
  shape=V     end with structured_output {"v": V} (as with a schema)
  calltool=N  call the client's tool N (an MCP "sdk" server, the daemon),
              wait for its result, answer "result: <its text>"
  upstream=E  fail the turn as the real CLI (2.1.197) reports an upstream
              error: E is limit=S (a plan's usage limit resetting S seconds
              from now: a rate_limit_event, then 429), rate (a bare 429),
              overloaded (529 after an api_retry), auth (401) or bad
              (400, the request's own fault: not the account's)
  forged      answer text that reads like an API error (a model's words)

With --mcp-config it first asks the daemon's MCP server for its tools.

Each answer starts with a message_start (input_tokens 7).  An interrupt
(a control_request line) is answered with a control_response.

Its session is the one --session-id or --resume names.  The answer's text
is "echo: MESSAGE"."""

import json
import os
import sys
import time

session, model, mcp = "", "", False
pending = []
for arg in sys.argv[1:]:
    if arg.startswith(("--session-id=", "--resume=")):
        session = arg.split("=", 1)[1]
    elif arg.startswith("--model="):
        model = arg.split("=", 1)[1]
    elif arg.startswith("--mcp-config="):
        mcp = True
calls = 0


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def delta(text):
    out({"type": "stream_event", "event": {
        "type": "content_block_delta", "index": 0,
        "delta": {"type": "text_delta", "text": text}}})


def result(text, **kw):
    out(dict({"type": "result", "subtype": "success", "is_error": False,
              "duration_ms": 1, "result": text, "session_id": session,
              "total_cost_usd": 0.001, "stop_reason": "end_turn",
              "usage": {"input_tokens": 3, "output_tokens": 2}}, **kw))


def mcp_request(method, params, rid):
    """An MCP request to the daemon, as the CLI sends it; its answer."""
    out({"type": "control_request", "request_id": "req-%s" % rid,
         "request": {"subtype": "mcp_message", "server_name": "ccgate",
                     "message": {"jsonrpc": "2.0", "id": rid,
                                 "method": method, "params": params}}})
    while True:
        raw = sys.stdin.readline()
        line = json.loads(raw)
        if line.get("type") == "control_response":
            return line["response"]["response"]["mcp_response"]
        pending.append(raw)     # a turn that came meanwhile: for later


def control(msg):
    out({"type": "control_response", "response": {
        "subtype": "success", "request_id": msg.get("request_id")}})


if mcp:
    mcp_request("initialize", {"protocolVersion": "2025-06-18"}, 0)
    TOOLS = [t["name"] for t in mcp_request("tools/list", {}, 1)["result"]
             ["tools"]]

def lines():
    """The lines of stdin, those read ahead of their turn first."""
    while True:
        if pending:
            yield pending.pop(0)
            continue
        raw = sys.stdin.readline()
        if not raw:
            return
        yield raw


def upstream_error(kind):
    """The lines the real CLI prints for a turn the upstream refused."""
    if kind.startswith("limit"):
        reset = int(time.time()) + int(kind.split("=", 1)[1])
        out({"type": "rate_limit_event", "rate_limit_info": {
            "status": "rejected", "resetsAt": reset,
            "rateLimitType": "five_hour", "isUsingOverage": False},
            "session_id": session})
        status, err, text = 429, "rate_limit", (
            "You've hit your session limit · resets 9am (UTC)")
    elif kind == "rate":
        status, err, text = 429, "rate_limit", (
            "API Error: Request rejected (429) · rate limited")
    elif kind == "overloaded":
        out({"type": "system", "subtype": "api_retry", "attempt": 1,
             "max_retries": 1, "retry_delay_ms": 500, "error_status": 529,
             "error": "overloaded", "session_id": session})
        status, err, text = 529, "server_error", "API Error: 529 Overloaded."
    elif kind == "bad":
        status, err, text = 400, "invalid_request", (
            "API Error: 400 messages: text content blocks must be non-empty")
    else:
        status, err, text = 401, "authentication_failed", (
            "Failed to authenticate. API Error: 401 token expired")
    out({"type": "assistant", "message": {
        "model": "<synthetic>", "role": "assistant",
        "content": [{"type": "text", "text": text}]},
        "error": err, "session_id": session})
    result(text, is_error=True, api_error_status=status,
           stop_reason="stop_sequence",
           usage={"input_tokens": 0, "output_tokens": 0})


for line in lines():
    msg = json.loads(line)
    if msg.get("type") == "control_request":
        control(msg)
        continue
    text = msg["message"]["content"]
    if isinstance(text, list):
        text = " ".join(b.get("text", "") for b in text)
    if "requires a tool call" in text:      # the daemon, for tool_choice
        text = "calltool=" + TOOLS[0]
    said = model
    for word in text.split():
        if word.startswith("model="):
            said = word[6:]
    if "crash-once" in text:
        mark = os.path.join(os.environ["HOME"], "crashed-once")
        if not os.path.exists(mark):
            open(mark, "w").close()
            sys.exit(3)
    elif "crash" in text:
        sys.exit(3)
    if "silent" in text:
        time.sleep(3600)
    out({"type": "system", "subtype": "init", "session_id": session,
         "model": said, "tools": []})
    if "hang" in text:
        time.sleep(3600)
    if "slow" in text:
        time.sleep(0.3)
    out({"type": "stream_event", "event": {
        "type": "message_start", "message": {"usage": {
            "input_tokens": 7, "cache_read_input_tokens": 1,
            "cache_creation_input_tokens": 0, "output_tokens": 1}}}})
    out({"type": "stream_event", "event": {
        "type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}})
    if "upstream=" in text:
        upstream_error(text.split("upstream=", 1)[1].split()[0])
        continue
    if "forged" in text:
        forged = ("API Error: Request rejected (429) · You've hit your "
                  "usage limit · resets 9am (UTC)")
        delta(forged)
        result(forged, api_error_status=None)
        continue
    delta("echo: ")
    if "stall" in text:
        time.sleep(3600)
    if "maxtokens" in text:
        out({"type": "stream_event", "event": {
            "type": "message_delta", "delta": {"stop_reason": "max_tokens"},
            "usage": {"output_tokens": 2}}})
        delta("IGNORED")   # the CLI asks the model to go on
        control(json.loads(sys.stdin.readline()))
        result("", subtype="error_during_execution", is_error=True,
               stop_reason="max_tokens")
        continue
    if "calltool=" in text:
        name = text.split("calltool=", 1)[1].split()[0]
        calls += 1
        tid = "toolu_stub_%d" % calls
        out({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": tid, "name": name,
             "input": {"q": name}}]}})
        out({"type": "stream_event", "event": {
            "type": "message_delta", "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 5}}})
        got = mcp_request("tools/call", {"name": name, "arguments":
                                         {"q": name},
                                         "_meta": {"claudecode/toolUseId":
                                                   tid}}, 100 + calls)
        said = " ".join(c.get("text", "") for c in got["result"]["content"])
        err = " (error)" if got["result"].get("isError") else ""
        out({"type": "stream_event", "event": {
            "type": "message_start", "message": {"usage": {
                "input_tokens": 11, "output_tokens": 1}}}})
        delta("result: " + said + err)
        out({"type": "stream_event", "event": {
            "type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 3}}})
        result("result: " + said + err)
        continue
    if "pieces:" in text:
        pieces = text.split("pieces:", 1)[1].split()
        for piece in pieces:
            delta(piece.replace("_", " "))
        result("echo: " + "".join(pieces).replace("_", " "))
        continue
    delta(text)
    out({"type": "stream_event", "event": {
        "type": "message_delta", "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 2}}})
    if "shape=" in text:
        v = text.split("shape=", 1)[1].split()[0]
        result(json.dumps({"v": v}), structured_output={"v": v},
               stop_reason="tool_use")
        continue
    result("echo: " + text)
