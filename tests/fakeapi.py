"""A fake Anthropic Messages API on loopback, scripted by the prompt, for driving the real CLI.

Point the real Claude Code CLI at it (``ANTHROPIC_BASE_URL=fake.url``, see claude_cli.py) and
it streams answers the way the real API does, so the CLI really writes files, runs commands,
retries, fails and hangs, offline and in about a second per run.

The script language
-------------------
Lines of the user's prompt (the last text block of the first user message) that start with
``FAKE:``, or are list items ``- FAKE:`` (a detail line of a tasks.md block), say how to
answer; the rest of the prompt is ignored. A directive is ``FAKE: <verb> <words>``,
optionally followed by ``<<body>>``: the body runs to the next ``>>`` that ends a line, so
it may span lines and hold ">>" elsewhere. Steps, one per model turn (the turn is the
number of tool_result blocks the CLI has sent back, so the fake keeps no per-conversation
state)::

    FAKE: write notes/a.txt <<hello>>   Write tool_use; a relative path is resolved against
                                         the cwd the CLI reports in its system prompt (an
                                         --agent's prompt has none: the CLI resolves it)
    FAKE: bash echo hi > out.txt        Bash tool_use (FAKE: bash <<cmd>> when cmd has "<<")
    FAKE: text All done.                final text answer with stop_reason end_turn
    FAKE: hang                          accept the request, never answer
    FAKE: stall                         send message_start and half a text block, then hold
    FAKE: usage-limit [five_hour|seven_day|seven_day_opus|seven_day_sonnet]
                                        the 429 a subscription gets at its usage limit

A directive written ``FAKE[<text>]: <verb> <words>`` is gated: it applies only when the
prompt's text outside the directives (and their bodies) contains <text> (no "]" in it). One
script can so answer prompts that share it differently, as the phases of a workflow do: each
phase's prompt carries the same feature description, and its own target path::

    FAKE[specs/demo/design.md`]: write .claude/specs/demo/design.md <<# Design ...>>

write and bash are taken in order, one per turn; after them the first other step answers
(default: the text "Done."). A held request (hang, stall) ends at close(), when the CLI
disconnects, or after HOLD_MAX_S. A prompt may also set::

    FAKE: fail 2 529      the first 2 requests carrying this prompt key get HTTP 529 (also
                          400, 401, 403, 429, 500); "fail always 401" never lets one through
    FAKE: hang-first 1    the first request carrying this prompt key that the closing step
                          would answer (the one after the write and bash steps) hangs instead;
                          later ones get that step: a supervisor's retry then succeeds
    FAKE: key task-7      the key failures and hangs are counted under (default: the whole
                          prompt), so retries by the CLI and by a supervisor share the count
    FAKE: usage 1000 50   input/output tokens reported per answer (the defaults)

What the CLI 2.1.197 makes of the answers: errors are retried after 0.5 s * 2^n (+25 %);
``retry-after`` (sent as 0 on 429s) can only lengthen that, and over 60 s stops the retries.
usage-limit answers 429 with ``retry-after: 3600``, the ``anthropic-ratelimit-unified-*``
headers and USAGE_LIMIT_TEXT as the error message. With an API key the CLI ends at once with
is_error, status 429 and "API Error: Request rejected (429) · " + USAGE_LIMIT_TEXT. Logged in
with a subscription token (claude_cli.fake_api_env(subscription=True)) it prints its own
"You've hit your session limit · resets 8:25am (UTC)" from the headers (the clock time in
the CLI's TZ). Cost: the CLI prices the usage the fake reports by the model id it asked for
(claude-sonnet-4-5: $3/$15 per million tokens in/out; an unknown id costs like Opus).

``FakeAnthropic(api_key="sk-ant-test")`` checks keys as the real API does: a request with
any other ``x-api-key`` gets 401 authentication_error "invalid x-api-key", whatever it asks.

Concurrency
-----------
``concurrency_max`` is the most CLI sessions (header X-Claude-Code-Session-Id) in flight at
once, counted at each request. A session is in flight from its first request until the fake
gives it an end_turn answer, or until its process is gone (found from the TCP peer through
/proc, Linux only): retries, back-off waits and tool runs all count. Where the process cannot
be found, a session also stops counting at any answer that is not a tool_use.
"""
from __future__ import annotations

import dataclasses
import glob
import http.server
import json
import os
import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}
USAGE_LIMIT_TEXT = "You've hit your session limit · resets 12:50am (America/Los_Angeles)"
HOLD_MAX_S = 600.0  # a held request gives up by itself even if close() is never called
TOOL_VERBS = ("write", "bash")
TURN_VERBS = TOOL_VERBS + ("text", "hang", "stall", "usage-limit")
HEADERS_KEPT = ("anthropic-beta", "anthropic-version", "user-agent", "x-api-key",
                "authorization", "x-stainless-retry-count", "x-claude-code-session-id")
# A directive starts a line, or a list item (a task's detail bullet: "  - FAKE: ...").
_DIRECTIVE = re.compile(r"^[ \t]*(?:[-*+][ \t]+)?FAKE(?:\[([^\]\n]*)\])?:[ \t]*([a-z-]+)[ \t]*"
                        r"([^\n]*)", re.M)
_BODY_END = re.compile(r">>[ \t]*(\n|$)")
_CWD = re.compile(r"Primary working directory: (.+)")


@dataclass(frozen=True)
class Step:
    """One directive: its verb, the words after it, and the <<body>> if it had one."""
    verb: str
    words: str = ""
    body: Optional[str] = None

    @property
    def text(self) -> str:
        """The argument of a one-argument directive: the body, else the words."""
        return self.words if self.body is None else self.body


@dataclass(frozen=True)
class Script:
    """What one prompt asks the fake to do."""
    steps: Tuple[Step, ...] = ()
    fail_count: float = 0.0  # float("inf") for "fail always"
    fail_status: int = 0
    key: str = ""
    usage: Tuple[int, int] = (1000, 50)
    hang_first: int = 0


@dataclass(frozen=True)
class Request:
    """One request as the fake saw it, and what it answered."""
    time: float
    method: str
    path: str
    headers: Dict[str, str]  # the HEADERS_KEPT ones that were sent
    body: dict
    prompt: str = ""
    model: str = ""
    system: str = ""  # all system blocks, joined by newlines
    tools: Tuple[str, ...] = ()
    cwd: str = ""
    session_id: str = ""
    answer: str = ""  # "tool_use write", "text", "error 529", "hang", "usage-limit ..."


def parse_script(prompt: str) -> Script:
    """Read the FAKE: directives of a prompt; ValueError names a directive it cannot read."""
    found = []  # (gate, the directive's text, its step)
    spans = []  # where directives and their bodies are: not part of the prompt's own text
    pos = 0
    while True:
        m = _DIRECTIVE.search(prompt, pos)
        if not m:
            break
        step, pos = Step(m.group(2), m.group(3).strip()), m.end()
        if "<<" in step.words:
            start = m.start(3) + m.group(3).index("<<") + 2
            close = _BODY_END.search(prompt, start)
            end = close.start() if close else len(prompt)
            step, pos = Step(step.verb, step.words.split("<<")[0].strip(),
                             prompt[start:end]), close.end() if close else end
        found.append((m.group(1), m.group(0), step))
        spans.append((m.start(), pos))
    plain = "".join(prompt[a:b] for a, b in zip([0] + [e for _, e in spans],
                                                [s for s, _ in spans] + [len(prompt)]))
    steps, fail_count, fail_status, key, usage, hang_first = [], 0.0, 0, prompt, (1000, 50), 0
    for gate, directive, step in found:
        if gate is not None and gate not in plain:
            continue
        try:
            if step.verb == "fail":
                count, status = step.words.split()
                fail_count = float("inf") if count == "always" else float(int(count))
                fail_status = int(status)
            elif step.verb == "usage":
                tokens_in, tokens_out = step.words.split()
                usage = (int(tokens_in), int(tokens_out))
            elif step.verb == "hang-first":
                hang_first = int(step.words)
            elif step.verb == "key":
                key = step.text
            elif step.verb in TURN_VERBS:
                steps.append(step)
            else:
                raise ValueError("unknown verb")
        except ValueError as e:
            raise ValueError("bad directive %r: %s" % (directive, e)) from None
    return Script(tuple(steps), fail_count, fail_status, key, usage, hang_first)


def describe(method: str, path: str, headers, body: dict) -> Request:
    """Extract from a raw request what tests assert on."""
    def texts(content) -> List[str]:
        if isinstance(content, str):
            return [content]
        return [b.get("text", "") for b in content if b.get("type") == "text"]

    first_user = next((m for m in body.get("messages") or () if m.get("role") == "user"), None)
    prompt = (texts(first_user["content"]) or [""])[-1] if first_user else ""
    system = "\n".join(texts(body.get("system") or ""))
    cwd = _CWD.search(system)
    kept = {k: headers[k] for k in HEADERS_KEPT if headers.get(k) is not None}
    return Request(time.time(), method, path, kept, body, prompt, body.get("model", ""),
                   system, tuple(t.get("name", "") for t in body.get("tools") or ()),
                   cwd.group(1).strip() if cwd else "", kept.get("x-claude-code-session-id", ""))


def next_step(script: Script, body: dict) -> Step:
    """The step that answers this request: tool steps by turn, then the first other one."""
    turn = sum(1 for m in body.get("messages") or () if isinstance(m.get("content"), list)
               for b in m["content"] if b.get("type") == "tool_result")
    tools = [s for s in script.steps if s.verb in TOOL_VERBS]
    if turn < len(tools):
        return tools[turn]
    return next((s for s in script.steps if s.verb not in TOOL_VERBS), Step("text", "Done."))


def peer_pid(client_port: int, server_port: int) -> Optional[int]:
    """The local process on the other end of a loopback TCP connection (Linux), or None."""
    try:
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        inode = next(r[9] for r in rows if int(r[1].split(":")[1], 16) == client_port
                     and int(r[2].split(":")[1], 16) == server_port)
        wanted = "socket:[%s]" % inode
        for fd in glob.glob("/proc/[0-9]*/fd/*"):  # unreadable ones are left out
            try:
                if os.readlink(fd) == wanted:
                    return int(fd.split("/")[2])
            except OSError:  # processes come and go
                continue
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return None


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


class FakeAnthropic:
    """The fake API: serves from construction until close() (or the end of a with-block)."""

    def __init__(self, api_key: Optional[str] = None) -> None:
        self.api_key = api_key  # when set, any other x-api-key gets the API's 401
        self.requests: List[Request] = []
        self.concurrency_max = 0
        self._in_flight: Dict[str, Optional[int]] = {}  # session id -> its CLI's pid
        self._counts: Dict[Tuple[str, str], int] = {}  # (what, prompt key) -> times so far
        self._released = threading.Event()
        self._changed = threading.Condition()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        # A short poll interval so that close() returns at once.
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                         name="fake-anthropic").start()

    def __enter__(self) -> "FakeAnthropic":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and let every held (hanging or stalled) request return."""
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until predicate() holds, checked again as requests come and go; False if not."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def messages(self) -> List[Request]:
        """The POST /v1/messages requests so far, in arrival order."""
        with self._changed:
            return [r for r in self.requests if r.path.split("?")[0] == "/v1/messages"]

    # -- called from handler threads ------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def _begin(self, session: str, find_pid: Callable[[], Optional[int]]) -> None:
        with self._changed:
            self._in_flight[session] = self._in_flight.get(session) or find_pid()
            self._in_flight = {s: p for s, p in self._in_flight.items()
                               if s == session or p is None or _alive(p)}
            self.concurrency_max = max(self.concurrency_max, len(self._in_flight))
            self._changed.notify_all()

    def _end(self, session: str, answer: str) -> None:
        with self._changed:
            unknown_pid = self._in_flight.get(session) is None
            if answer == "text" or (unknown_pid and not answer.startswith("tool_use")):
                self._in_flight.pop(session, None)
            self._changed.notify_all()

    def _count_within(self, what: str, key: str, limit: float) -> bool:
        """Count one more `what` for the prompt key; True while the count is within limit."""
        with self._changed:
            done = self._counts.get((what, key), 0)
            self._counts[(what, key)] = done + 1
            return done < limit


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive like the real API; streams are chunked

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    @property
    def fake(self) -> FakeAnthropic:
        return self.server.fake  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:  # the CLI probes HEAD / before its first request
        self.fake._record(describe(self.command, self.path, self.headers, {}))
        self._json(200, {}, send_body=False)

    def do_GET(self) -> None:
        self.fake._record(describe(self.command, self.path, self.headers, {}))
        if self.path == "/":
            self._json(200, {})
        else:
            self._error(404, "Not found: %s" % self.path)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = {}
        request = describe(self.command, self.path, self.headers, body)
        path = self.path.split("?")[0]
        if path == "/v1/messages":
            self._messages(request)
        elif path == "/v1/messages/count_tokens":
            self.fake._record(dataclasses.replace(request, answer="count_tokens"))
            self._json(200, {"input_tokens": 1000})
        else:
            self.fake._record(dataclasses.replace(request, answer="error 404"))
            self._error(404, "Not found: %s" % self.path)

    def _messages(self, request: Request) -> None:
        session = request.session_id or "%s:%d" % self.client_address
        self.fake._begin(session, lambda: peer_pid(self.client_address[1], self.fake.port))
        answer = "error 400"
        try:
            try:
                script = parse_script(request.prompt)
            except ValueError as e:
                self.fake._record(dataclasses.replace(request, answer=answer))
                return self._error(400, str(e))
            if self.fake.api_key and request.headers.get("x-api-key") != self.fake.api_key:
                answer = "error 401"
                self.fake._record(dataclasses.replace(request, answer=answer))
                return self._error(401, "invalid x-api-key")
            if script.fail_status and self.fake._count_within("fail", script.key,
                                                               script.fail_count):
                answer = "error %d" % script.fail_status
                self.fake._record(dataclasses.replace(request, answer=answer))
                return self._error(script.fail_status, "fake failure %d" % script.fail_status,
                                   {"retry-after": "0"} if script.fail_status == 429 else {})
            step = next_step(script, request.body)
            if (script.hang_first and step.verb not in TOOL_VERBS
                    and self.fake._count_within("hang", script.key, script.hang_first)):
                step = Step("hang")
            answer = ("tool_use " if step.verb in TOOL_VERBS else "") + step.verb
            if step.verb == "usage-limit":
                answer = self._usage_limit(step.words or "five_hour", request)
            else:
                self.fake._record(dataclasses.replace(request, answer=answer))
                self._answer(step, request, script.usage)
        finally:
            self.fake._end(session, answer)

    def _usage_limit(self, claim: str, request: Request) -> str:
        reset = str(int(time.time()) + 3600)
        answer = "usage-limit %s %s" % (claim, reset)
        self.fake._record(dataclasses.replace(request, answer=answer))
        self._error(429, USAGE_LIMIT_TEXT, {
            "retry-after": "3600", "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": reset,
            "anthropic-ratelimit-unified-representative-claim": claim})
        return answer

    def _answer(self, step: Step, request: Request, usage: Tuple[int, int]) -> None:
        """Stream the answer for one step (or hold the request, for hang and stall)."""
        if step.verb == "hang":
            return self._hold()
        tool_id = "toolu_fake_%d" % len(self.fake.requests)
        self._start_stream()
        self._event("message_start", {"type": "message_start", "message": {
            "id": "msg_fake_%d" % len(self.fake.requests), "type": "message",
            "role": "assistant", "model": request.model, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": usage[0], "output_tokens": 1,
                                             "cache_creation_input_tokens": 0,
                                             "cache_read_input_tokens": 0}}})
        if step.verb == "write":
            path, _, content = step.words.partition(" ")
            self._block({"type": "tool_use", "id": tool_id, "name": "Write", "input": {}},
                        {"type": "input_json_delta", "partial_json": json.dumps({
                            "file_path": os.path.join(request.cwd, path),
                            "content": content if step.body is None else step.body})})
        elif step.verb == "bash":
            self._block({"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}},
                        {"type": "input_json_delta", "partial_json": json.dumps({
                            "command": step.text, "description": "Run the scripted command"})})
        else:
            self._block({"type": "text", "text": ""},
                        {"type": "text_delta", "text": step.text or "Done."},
                        stop=step.verb != "stall")
            if step.verb == "stall":
                return self._hold()
        stop_reason = "tool_use" if step.verb in TOOL_VERBS else "end_turn"
        self._event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": usage[1]}})
        self._event("message_stop", {"type": "message_stop"})
        self._chunk(b"")  # the last chunk: the stream is complete

    def _hold(self) -> None:
        """Keep the request open until close(), the client leaving, or HOLD_MAX_S."""
        deadline = time.monotonic() + HOLD_MAX_S
        while not self.fake._released.wait(0.2) and time.monotonic() < deadline:
            try:
                if (select.select([self.connection], [], [], 0)[0]
                        and not self.connection.recv(1, socket.MSG_PEEK)):
                    break  # the CLI closed the connection (it gave up, or was stopped)
            except OSError:
                break  # the connection was reset: the CLI was killed
        self.close_connection = True

    # -- wire format ----------------------------------------------------------------------

    def _block(self, start: dict, delta: dict, stop: bool = True) -> None:
        self._event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": start})
        self._event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": delta})
        if stop:
            self._event("content_block_stop", {"type": "content_block_stop", "index": 0})

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", "req_fake")
        self.end_headers()

    def _event(self, name: str, data: dict) -> None:
        self._chunk(("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _error(self, status: int, message: str, headers: Optional[dict] = None) -> None:
        self._json(status, {"type": "error", "error": {
            "type": ERROR_TYPES.get(status, "api_error"), "message": message}}, headers)

    def _json(self, status: int, payload: dict, headers: Optional[dict] = None,
              send_body: bool = True) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_fake")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(data)
