"""A grpcio client over mTLS: calls /zt.test.Echo/Who with b"hello" and b"fail",
prints both outcomes as JSON. Usage: grpc_client.py TARGET CERT KEY CA"""

import json
import sys

import grpc

target, cert, key, ca = sys.argv[1:]
read = lambda path: open(path, "rb").read()
credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
result = {}
with grpc.secure_channel(target, credentials) as channel:
    call = channel.unary_unary("/zt.test.Echo/Who")
    result["hello"] = call(b"hello", timeout=10).decode()
    try:
        call(b"fail", timeout=10)
        result["fail"] = "no error"
    except grpc.RpcError as e:
        result["fail"] = f"{e.code().name}: {e.details()}"
print(json.dumps(result))
