#!/usr/bin/env python3
"""A deterministic stand-in for a language model, speaking OpenAI chat completions.

It sits behind the real LiteLLM proxy (``model: openai/<scenario>`` with ``api_base`` pointing
here) and answers like a model that edits train.py: it reads the current train.py from the
request (the ```python block of the first user message), picks one numeric top-level constant
and nudges it. The choice is a hash of the request, so the same conversation gets the same
answer, and a re-ask (one more assistant turn) gets a different one.

The requested model name selects the behaviour (``<scenario>`` or ``<scenario>-<n>``):

  edit        a valid JSON edit, bare
  prose       the same edit in a fenced json block with prose around it
  whole       the whole edited train.py in a ```python block
  noapply     first an edit whose "old" is not in train.py, then (re-asked) a valid edit
  broken      first an edit that breaks the syntax, then a valid edit
  garbage     first prose without any edit, then a valid edit
  slow-N      a valid edit after sleeping N seconds
  fail500-N   HTTP 500 for the first N requests of this model, then a valid edit
  limit429-N  HTTP 429 with Retry-After: N for the first request of this model, then a valid edit

Every request is appended as one JSON line to --log (if given), so tests can check what the
coordinator sent. Standard library only.

  proposer.py --port 0 [--log FILE] [--key KEY]     # prints "listening on <port>"
"""

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONSTANT = re.compile(
    r"^(?P<name>[A-Z][A-Z0-9_]*)(?P<eq>\s*(?::[^=\n]+)?=\s*)"
    r"(?P<value>[0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)(?P<rest>[ \t]*(?:#.*)?)$",
    re.MULTILINE,
)
FACTORS = (0.5, 0.7, 1.4, 2.0)
STEPS = (-1, 1, 2, -2)

counts = {}
counts_lock = threading.Lock()


def train_py_of(messages):
    for m in messages:
        content = m.get("content") or ""
        if m.get("role") == "user" and "```python\n" in content:
            start = content.index("```python\n") + len("```python\n")
            end = content.find("\n```", start)
            return content[start:end + 1] if end >= 0 else content[start:]
    return ""


def nudge(value):
    """All nudged versions of a numeric literal, as literals."""
    if re.fullmatch(r"[0-9_]+", value):
        n = int(value.replace("_", ""))
        return [str(max(1, n + s)) for s in STEPS]
    x = float(value)
    return [repr(round(x * f, 6)) for f in FACTORS]


def propose(messages):
    """(description, old, new, source) of one edit of the train.py in the request."""
    source = train_py_of(messages)
    turns = sum(1 for m in messages if m.get("role") == "assistant")
    digest = hashlib.sha256((source + "\0" + str(turns) + "\0" + messages[-1].get("content", "")).encode()).digest()
    candidates = []
    for m in CONSTANT.finditer(source):
        for new_value in nudge(m.group("value")):
            if new_value != m.group("value"):
                candidates.append((m, new_value))
    if not candidates:
        return ("append a comment", source[-1:] or "\n", (source[-1:] or "\n") + "# tried\n", source)
    m, new_value = candidates[int.from_bytes(digest[:8], "big") % len(candidates)]
    old = m.group(0)
    new = m.group("name") + m.group("eq") + new_value + m.group("rest")
    return (f"{m.group('name')} {m.group('value')} -> {new_value}", old, new, source)


def edit_json(description, old, new):
    return json.dumps({"description": description, "changes": [{"old": old, "new": new}]})


def answer(scenario, messages):
    """The reply text for a scenario (the HTTP-level scenarios are handled before)."""
    description, old, new, source = propose(messages)
    first = not any(m.get("role") == "assistant" for m in messages)
    if scenario == "noapply" and first:
        return edit_json("change a line that is not there", "THIS_LINE_IS_NOT_IN_TRAIN_PY = 1", "X = 2")
    if scenario == "broken" and first:
        return edit_json("break the syntax", old, new + " = (")
    if scenario == "garbage" and first:
        return "I am not sure what to change. Could you tell me more about the model?"
    if scenario == "prose":
        return ("Looking at the results, I would try this next.\n\n```json\n"
                + edit_json(description, old, new)
                + "\n```\n\nThis keeps everything else {unchanged}.")
    if scenario == "whole":
        return f"{description}\n\n```python\n{source.replace(old, new, 1)}```\n"
    return edit_json(description, old, new)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status, message, kind, headers=()):
        self.send_json(status, {"error": {"message": message, "type": kind, "code": str(status)}}, headers)

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self.send_json(200, {"object": "list", "data": []})
        else:
            self.send_error_json(404, "not found", "invalid_request_error")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return self.send_error_json(404, "not found", "invalid_request_error")
        try:
            request = json.loads(raw)
            model = str(request["model"])
            messages = list(request["messages"])
        except (ValueError, KeyError, TypeError):
            return self.send_error_json(400, "expected model and messages", "invalid_request_error")
        if self.server.log:
            with counts_lock, open(self.server.log, "a") as f:
                f.write(json.dumps({"model": model, "request": request,
                                    "authorization": self.headers.get("Authorization")}) + "\n")
        key = self.server.key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            return self.send_error_json(401, "Incorrect API key provided", "invalid_request_error")
        scenario, _, arg = model.rpartition("/")[2].partition("-")
        with counts_lock:
            seen = counts.get(model, 0)
            counts[model] = seen + 1
        n = int(arg) if arg.isdigit() else 1
        if scenario == "slow":
            time.sleep(n)
        if scenario == "fail500" and seen < n:
            return self.send_error_json(500, "the model crashed", "internal_server_error")
        if scenario == "limit429" and seen == 0:
            return self.send_error_json(429, "rate limit reached", "rate_limit_error", [("Retry-After", str(n))])
        content = answer(scenario, messages)
        self.send_json(200, {
            "id": f"chatcmpl-{seen}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": (len(raw) + len(content)) // 4},
        })


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log")
    parser.add_argument("--key", help="require this bearer key (as a hosted model would)")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.log = args.log
    server.key = args.key
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
