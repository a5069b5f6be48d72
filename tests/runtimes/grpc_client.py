"""A gRPC client for tests/runtimes.rs: unary, server-streaming and echo calls to TARGET with
`authorization: Bearer TOKEN` metadata, over TLS trusting only what grpcio trusts by default
(its bundled roots, or GRPC_DEFAULT_SSL_ROOTS_FILE_PATH: netcage sets it), through the proxy
grpcio finds in grpc_proxy/https_proxy (Tier 0) or none (Tier 1).

Usage: grpc_client.py TARGET TOKEN
Prints one line per response message; on an RPC error prints `error CODE DETAILS`, exit 3.
"""
import sys

import grpc

target, token = sys.argv[1], sys.argv[2]
metadata = (("authorization", "Bearer " + token),)
try:
    with grpc.secure_channel(target, grpc.ssl_channel_credentials()) as channel:
        reply = channel.unary_unary("/test.Echo/Unary")(b"hello", metadata=metadata, timeout=20)
        print("unary", reply.decode())
        for part in channel.unary_stream("/test.Echo/Stream")(b"hi", metadata=metadata, timeout=20):
            print("stream", part.decode())
        # The server echoes the real value: the proxy redacts it inside the gRPC message.
        reply = channel.unary_unary("/test.Echo/Auth")(b"", metadata=metadata, timeout=20)
        print("auth", reply.decode())
except grpc.RpcError as e:
    print("error", e.code().name, e.details())
    sys.exit(3)
