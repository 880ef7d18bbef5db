"""A plaintext gRPC app (grpcio, no generated code): `/zt.test.Echo/Who` answers
with the request bytes and the x-forwarded-client-cert it was given; a request of
b"fail" gets PERMISSION_DENIED, to check status and trailers pass through.
Prints "listening" when ready. Usage: grpc_app.py PORT"""

import sys
import time
from concurrent import futures

import grpc


def who(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "the app says no")
    metadata = dict(context.invocation_metadata())
    return request + b" from " + metadata.get("x-forwarded-client-cert", "nobody").encode()


handler = grpc.method_handlers_generic_handler(
    "zt.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
print("listening", flush=True)
while True:
    time.sleep(3600)
