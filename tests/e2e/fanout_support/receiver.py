#!/usr/bin/env python3
"""A webhook receiver for the fan-out tests: verifies every request with the PyPI
`standardwebhooks` package (an implementation independent of ours), answers as its plan says,
and logs each request as one JSON line.

    receiver.py --log FILE [--secret whsec_...]... [--secret-file FILE] [--plan PLAN] [--delay SECONDS]

--secret-file FILE: more secrets, one a line, read again for every request (after the --secret
ones, so their indices in verifiedWith follow), for secrets the engine generates mid-test.

The listening port is printed as `listening on PORT`. PLAN:
    ok                       200 to everything (default)
    status:N[,N...]          the k-th request gets the k-th status (the last one repeats)
    flaky:TIMEOUT_EVERY      odd requests 500, every TIMEOUT_EVERY-th request sleeps --delay first
    header:NAME=VALUE:STATUS always STATUS with that header (e.g. webhook-delivery=abort-message)
    retry-after:SECONDS:STATUS always STATUS with Retry-After
--delay SECONDS sleeps before answering every request (slow endpoint), except in flaky mode.
Bounded: the process ends by itself after --lifetime seconds (default 600).
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--secret", action="append", default=[])
    parser.add_argument("--secret-file")
    parser.add_argument("--plan", default="ok")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args()

    lock = threading.Lock()
    state = {"count": 0, "in_flight": 0}
    log = open(args.log, "a", buffering=1)
    verifiers = [Webhook(s) for s in args.secret]

    def current_verifiers():
        if not args.secret_file:
            return verifiers
        try:
            with open(args.secret_file) as f:
                extra = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            extra = []
        return verifiers + [Webhook(s) for s in extra]

    def answer_for(k):
        """(status, headers, delay) for the k-th request (1-based)."""
        plan = args.plan
        if plan == "ok":
            return 200, {}, args.delay
        if plan.startswith("status:"):
            statuses = [int(s) for s in plan[len("status:"):].split(",")]
            return statuses[min(k, len(statuses)) - 1], {}, args.delay
        if plan.startswith("flaky:"):
            every = int(plan[len("flaky:"):])
            delay = args.delay if k % every == 0 else 0.0
            return (500 if k % 2 == 1 else 200), {}, delay
        if plan.startswith("header:"):
            _, header, status = plan.split(":")
            name, value = header.split("=", 1)
            return int(status), {name: value}, args.delay
        if plan.startswith("retry-after:"):
            _, seconds, status = plan.split(":")
            return int(status), {"Retry-After": seconds}, args.delay
        raise SystemExit(f"unknown plan {plan}")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            arrived = time.time()
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with lock:
                state["count"] += 1
                state["in_flight"] += 1
                k = state["count"]
                in_flight = state["in_flight"]
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified_with = []
            errors = []
            for index, verifier in enumerate(current_verifiers()):
                try:
                    verifier.verify(body, headers)
                    verified_with.append(index)
                except WebhookVerificationError as e:
                    errors.append(str(e))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            status, extra, delay = answer_for(k)
            if delay:
                time.sleep(delay)
            record = {
                "k": k,
                "path": self.path,
                "arrivedAt": arrived,
                "inFlight": in_flight,
                "webhookId": headers.get("webhook-id"),
                "webhookTimestamp": headers.get("webhook-timestamp"),
                "signatures": len(headers.get("webhook-signature", "").split()),
                "verifiedWith": verified_with,
                "verifyErrors": errors,
                "ce": {h: v for h, v in headers.items() if h.startswith("ce-")},
                "contentType": headers.get("content-type"),
                "body": parsed,
                "answered": status,
            }
            try:
                payload = b"ok" if 200 <= status < 300 else b"nope"
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                record["clientGone"] = True
            finally:
                with lock:
                    state["in_flight"] -= 1
                    log.write(json.dumps(record) + "\n")

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    threading.Timer(args.lifetime, server.shutdown).start()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
