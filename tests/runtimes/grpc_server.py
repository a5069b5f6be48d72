"""A gRPC server for tests/runtimes.rs (Python grpcio, TLS, generic handlers: no codegen).

Usage: grpc_server.py CERT_CHAIN_PEM KEY_PEM LOG
Prints the port it listens on (127.0.0.1) on its first line, then serves until killed.
Every call appends one JSON line to LOG: the method and the `authorization` metadata it
received, so the test can tell what reached the server.

  /test.Echo/Unary   returns b"unary:" + request
  /test.Echo/Stream  returns three messages b"part<i>:" + request (server streaming)
  /test.Echo/Auth    returns b"auth:" + the `authorization` it received (a reflected value)
"""
import json
import sys
from concurrent import futures

import grpc

cert, key, log_path = sys.argv[1:4]
log = open(log_path, "a", buffering=1)


def record(method, context):
    metadata = dict(context.invocation_metadata())
    log.write(json.dumps({"method": method, "authorization": metadata.get("authorization")}) + "\n")


def unary(request, context):
    record("unary", context)
    return b"unary:" + request


def stream(request, context):
    record("stream", context)
    for i in range(3):
        yield b"part%d:" % i + request


def auth(request, context):
    record("auth", context)
    return b"auth:" + (dict(context.invocation_metadata()).get("authorization") or "").encode()


handler = grpc.method_handlers_generic_handler(
    "test.Echo",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Auth": grpc.unary_unary_rpc_method_handler(auth),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
with open(key, "rb") as k, open(cert, "rb") as c:
    credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
port = server.add_secure_port("127.0.0.1:0", credentials)
server.start()
print(port, flush=True)
server.wait_for_termination()
