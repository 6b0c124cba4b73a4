#!/usr/bin/env python3
"""The Lambda functions measured: bootstrap zip size, init time, memory after N events.

Each function's bootstrap runs as Lambda runs it: a process whose only contact with the service
is the Runtime API (AWS_LAMBDA_RUNTIME_API). This script serves that API on loopback, hands the
process one event after another, and reads the process's memory from /proc. The events are the
shapes API Gateway sends (AWS's samples in aws_lambda_events' fixtures; the local gateway's
crates/chat-local/src/backends/events.rs builds the same), and the handlers work for real:
DynamoDB is moto_server, @connections is answered 200 by this script.

- zip: the arm64 bootstrap (what `sam build` deploys) zipped as SAM zips it (Python's zipfile,
  deflate), in bytes. The x86_64 build of the same profile is what runs here for the times.
- init: process start to its first `GET .../invocation/next` (what Lambda reports as "Init
  Duration"); first event: process start to the first response posted.
- memory: VmRSS after N events, and its peak (VmHWM).

Runtime API reference: https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zipfile

RUNTIME = "/2018-06-01/runtime"
STAGE = "dev"


class Runtime:
    """The Runtime API for one process at a time, and @connections (always 200)."""

    def __init__(self):
        self.events = queue.Queue()
        self.first_next = None
        self.responses = queue.Queue()
        runtime = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, body=b"", headers=()):
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != RUNTIME + "/invocation/next":
                    return self.reply(404)
                if runtime.first_next is None:
                    runtime.first_next = time.perf_counter()
                request_id, event = runtime.events.get()
                deadline = int(time.time() * 1000) + 30_000
                self.reply(
                    200,
                    json.dumps(event).encode(),
                    [
                        ("Lambda-Runtime-Aws-Request-Id", request_id),
                        ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                        (
                            "Lambda-Runtime-Invoked-Function-Arn",
                            "arn:aws:lambda:us-east-1:000000000000:function:bench",
                        ),
                        ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
                        ("Content-Type", "application/json"),
                    ],
                )

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.path.startswith(f"/{STAGE}/@connections/"):
                    return self.reply(200)
                parts = self.path.split("/")
                # /2018-06-01/runtime/invocation/{id}/response or /error
                if len(parts) == 6 and parts[3] == "invocation":
                    runtime.responses.put((time.perf_counter(), parts[5], body))
                    return self.reply(202, b"{}")
                if self.path == RUNTIME + "/init/error":
                    runtime.responses.put((time.perf_counter(), "init-error", body))
                    return self.reply(202, b"{}")
                self.reply(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A killed process resets its connection mid-request: not worth a traceback.
        self.server.handle_error = lambda request, address: None
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self):
        host, port = self.server.server_address
        return f"{host}:{port}"

    def invoke(self, event, timeout=30):
        request_id = str(uuid.uuid4())
        self.events.put((request_id, event))
        at, kind, body = self.responses.get(timeout=timeout)
        if kind != "response":
            raise RuntimeError(f"the function answered {kind}: {body[:300]!r}")
        return at, json.loads(body)


def request_context(route, event_type, connection_id, authorizer=None):
    now = int(time.time() * 1000)
    context = {
        "routeKey": route,
        "eventType": event_type,
        "extendedRequestId": str(uuid.uuid4()),
        "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
        "messageDirection": "IN",
        "stage": STAGE,
        "connectedAt": now,
        "requestTimeEpoch": now,
        "identity": {"sourceIp": "127.0.0.1"},
        "requestId": str(uuid.uuid4()),
        "domainName": "127.0.0.1",
        "connectionId": connection_id,
        "apiId": "bench",
    }
    if authorizer is not None:
        context["authorizer"] = authorizer
    return context


def connect_event(connection_id, name):
    return {
        "headers": {"Host": "127.0.0.1"},
        "multiValueHeaders": {"Host": ["127.0.0.1"]},
        "queryStringParameters": {"name": name},
        "multiValueQueryStringParameters": {"name": [name]},
        "requestContext": request_context("$connect", "CONNECT", connection_id),
        "isBase64Encoded": False,
    }


def message_event(connection_id, frame):
    route = frame.get("action", "$default")
    return {
        "body": json.dumps(frame),
        "requestContext": request_context(route, "MESSAGE", connection_id),
        "isBase64Encoded": False,
    }


def disconnect_event(connection_id):
    return {
        "headers": {"Host": "127.0.0.1"},
        "multiValueHeaders": {"Host": ["127.0.0.1"]},
        "requestContext": request_context("$disconnect", "DISCONNECT", connection_id),
        "isBase64Encoded": False,
    }


def hs256_token(secret, claims):
    def part(value):
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = part({"alg": "HS256", "typ": "JWT"}) + "." + part(claims)
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def authorizer_event(token, connection_id):
    event = connect_event(connection_id, "ignored")
    event["queryStringParameters"] = {"token": token}
    event["multiValueQueryStringParameters"] = {"token": [token]}
    event["type"] = "REQUEST"
    event["methodArn"] = "arn:aws:execute-api:us-east-1:000000000000:bench/dev/$connect"
    event["stageVariables"] = {}
    del event["isBase64Encoded"]
    return event


def api_event(method, path):
    now = int(time.time() * 1000)
    return {
        "version": "2.0",
        "routeKey": "ANY /api/{proxy+}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "127.0.0.1"},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "bench",
            # The HTTP API's IAM authorization (AWS_IAM on the route): who signed the call.
            "authorizer": {
                "iam": {
                    "accessKey": "AKIDBENCH",
                    "accountId": "000000000000",
                    "callerId": "AIDABENCH",
                    "cognitoIdentity": None,
                    "principalOrgId": None,
                    "userArn": "arn:aws:iam::000000000000:user/bench",
                    "userId": "AIDABENCH",
                }
            },
            "domainName": "127.0.0.1",
            "domainPrefix": "127",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "bench",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "ANY /api/{proxy+}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "timeEpoch": now,
        },
        "pathParameters": {"proxy": path.removeprefix("/api/")},
        "isBase64Encoded": False,
    }


SECRET = "lambda-bench-secret"
FANOUT_QUEUE = "lambda-bench-fanout.fifo"


def uuid7():
    """A UUID v7 (an event's id): 48 bits of ms since the epoch, the version, random bits."""
    ms = time.time_ns() // 1_000_000
    rand = os.urandom(10)
    head = bytes([0x70 | (rand[0] & 0x0F), rand[1], 0x80 | (rand[2] & 0x3F)])
    return str(uuid.UUID(bytes=ms.to_bytes(6, "big") + head + rand[3:10]))


def fanout_event(room, shard, endpoint):
    """An SQS event of one fan-out message (one shard's job), as the event source mapping sends
    it (AWS's example-sqs-event.json, with a FIFO queue's attributes)."""
    event = uuid7()
    frame = {"type": "message", "room": room, "id": event, "user": "bench", "text": "hello"}
    body = {
        "room": room,
        "shard": shard,
        "endpoint": endpoint,
        "event": event,
        "payload": json.dumps(frame),
    }
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "bench",
                "body": json.dumps(body),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": str(time.time_ns() // 1_000_000),
                    "MessageGroupId": f"{room}#{shard:02}",
                    "MessageDeduplicationId": f"{event}-{shard}",
                    "SequenceNumber": "1",
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(json.dumps(body).encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{FANOUT_QUEUE}",
                "awsRegion": "us-east-1",
            }
        ]
    }


def workload(function, count, management):
    """The events of one measurement: the first one (timed from process start), then the rest."""
    room = "bench"
    if function == "connect":
        return [connect_event(f"c{i}=", f"user{i}") for i in range(count)]
    if function == "message":
        # c0= was stored by the connect function's run: it joins, then sends one message in
        # ten and reads the room's history in between (moto's transactions slow down as its
        # table grows: a thousand sends took minutes, and the memory is what is measured).
        events = [message_event("c0=", {"action": "joinRoom", "room": room})]
        for i in range(count - 1):
            if i % 10 == 0:
                frame = {"action": "sendMessage", "room": room, "text": f"message {i}"}
                frame["clientMsgId"] = f"m{time.time_ns()}"
            else:
                frame = {"action": "history", "room": room, "limit": 20}
            events.append(message_event("c0=", frame))
        return events
    if function == "disconnect":
        return [disconnect_event(f"c{i}=") for i in range(count)]
    if function == "authorizer":
        token = hs256_token(SECRET, {"sub": "u1", "name": "Ada", "exp": int(time.time()) + 3600})
        return [authorizer_event(token, f"a{i}=") for i in range(count)]
    if function == "api":
        return [api_event("GET", f"/api/rooms/{room}/members") for _ in range(count)]
    if function == "fanout":
        # The room's 16 shards in turn; c0= (joined by the message function's run) is in one of
        # them, and gets each of its events (posted to this script's @connections).
        return [fanout_event(room, i % 16, management) for i in range(count)]
    raise ValueError(function)


def expect_ok(function, answer):
    if function == "authorizer":
        effect = answer["policyDocument"]["Statement"][0]["Effect"]
        if effect != "Allow":
            raise RuntimeError(f"the authorizer answered {answer}")
        return
    if function == "fanout":
        if answer.get("batchItemFailures") != []:
            raise RuntimeError(f"fanout answered {answer}")
        return
    status = answer.get("statusCode")
    if status not in (200, 201):
        raise RuntimeError(f"{function} answered {status}: {answer.get('body')}")
    if function == "message":
        # The reply frame is the body: `joined`, `ack` or `history`, never `error` or nothing.
        frame = json.loads(answer.get("body") or "{}")
        if frame.get("type") not in ("joined", "ack", "history"):
            raise RuntimeError(f"message answered {answer.get('body')!r}")


def memory_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


def run_function(bootstrap, function, env, count, measure_memory):
    runtime = Runtime()
    process_env = dict(env)
    process_env.update(
        {
            "AWS_LAMBDA_RUNTIME_API": runtime.address,
            "AWS_LAMBDA_FUNCTION_NAME": function,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
            "APIGW_MANAGEMENT_ENDPOINT": f"http://{runtime.address}/{STAGE}",
        }
    )
    events = workload(function, count, f"http://{runtime.address}/{STAGE}")
    started = time.perf_counter()
    process = subprocess.Popen(
        [bootstrap], env=process_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        first_at, answer = runtime.invoke(events[0])
        expect_ok(function, answer)
        init_ms = (runtime.first_next - started) * 1000
        first_ms = (first_at - started) * 1000
        memory = None
        if measure_memory:
            for event in events[1:]:
                _, answer = runtime.invoke(event)
                expect_ok(function, answer)
            memory = memory_kib(process.pid)
        return init_ms, first_ms, memory
    finally:
        process.kill()
        _, stderr = process.communicate()
        runtime.server.shutdown()
        if process.returncode not in (0, -9) and stderr:
            sys.stderr.write(stderr.decode(errors="replace")[-2000:])


def zipped_size(bootstrap):
    path = bootstrap + ".bench.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(bootstrap, "bootstrap")
    size = os.path.getsize(path)
    os.remove(path)
    return size


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_fanout_queue(endpoint):
    import boto3

    client = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    created = client.create_queue(QueueName=FANOUT_QUEUE, Attributes={"FifoQueue": "true"})
    return created["QueueUrl"]


def create_tables(endpoint):
    import boto3

    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_table(
        TableName="WebSocketConnections",
        AttributeDefinitions=[{"AttributeName": "connectionId", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "connectionId", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.create_table(
        TableName="ChatMessages",
        AttributeDefinitions=[
            {"AttributeName": "room", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "seq", "AttributeType": "N"},
        ],
        KeySchema=[
            {"AttributeName": "room", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        LocalSecondaryIndexes=[
            {
                "IndexName": "bySeq",
                "KeySchema": [
                    {"AttributeName": "room", "KeyType": "HASH"},
                    {"AttributeName": "seq", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )


FUNCTIONS = ["connect", "message", "fanout", "disconnect", "authorizer", "api"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstraps", required=True, help="the x86_64 binaries (run here)")
    parser.add_argument(
        "--zips",
        help="cargo lambda's target/lambda (arm64); without it, the sizes are of --bootstraps'",
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--starts", type=int, default=10, help="cold starts timed per function")
    parser.add_argument("--label", default="")
    parser.add_argument("--json", help="append the results here (JSON lines)")
    args = parser.parse_args()

    port = free_port()
    moto = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        create_tables(endpoint)
        queue_url = create_fanout_queue(endpoint)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
            "AWS_ENDPOINT_URL_SQS": endpoint,
            "FANOUT_QUEUE_URL": queue_url,
            "WEBSOCKET_TABLE": "WebSocketConnections",
            "MESSAGES_TABLE": "ChatMessages",
            "JWT_SECRET": SECRET,
            # Enough for the benchmark's sends from one connection: the limit is not measured.
            "CHAT_RATE_BURST": "100000",
            "RUST_LOG": "warn",
        }
        rows = []
        for function in FUNCTIONS:
            bootstrap = os.path.join(args.bootstraps, function)
            if args.zips:
                zip_path = os.path.join(args.zips, function, "bootstrap")
            else:
                zip_path = bootstrap
            row = {"function": function, "label": args.label}
            row["binary_bytes"] = os.path.getsize(zip_path)
            row["zip_bytes"] = zipped_size(zip_path)
            # The first start also handles the rest of the events and has its memory read; the
            # connect function's stores the connections that the message function's events use.
            inits, firsts = [], []
            for start in range(args.starts):
                measure = start == 0
                init_ms, first_ms, memory = run_function(
                    bootstrap, function, env, args.events, measure
                )
                inits.append(init_ms)
                firsts.append(first_ms)
                if measure:
                    row["rss_kib_after_events"] = memory["VmRSS"]
                    row["peak_rss_kib"] = memory["VmHWM"]
            row["init_ms_median"] = round(statistics.median(inits), 2)
            row["init_ms_max"] = round(max(inits), 2)
            row["first_event_ms_median"] = round(statistics.median(firsts), 2)
            row["events"] = args.events
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as out:
                    out.write(json.dumps(row) + "\n")
        print_table(rows)
    finally:
        moto.kill()
        moto.wait()


def print_table(rows):
    print()
    print("| function | bootstrap | zip | init (median / max) | first event | RSS after events | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['function']} | {row['binary_bytes'] / 1e6:.2f} MB | {row['zip_bytes'] / 1e6:.2f} MB"
            f" | {row['init_ms_median']:.1f} / {row['init_ms_max']:.1f} ms"
            f" | {row['first_event_ms_median']:.1f} ms"
            f" | {row['rss_kib_after_events'] / 1024:.1f} MiB | {row['peak_rss_kib'] / 1024:.1f} MiB |"
        )


if __name__ == "__main__":
    main()
