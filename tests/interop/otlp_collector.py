"""An OTLP/gRPC trace receiver made of OpenTelemetry's own protos
(opentelemetry-proto) served with grpcio: it implements
opentelemetry.proto.collector.trace.v1.TraceService/Export and appends every span
it receives to OUT as one JSON line: ids in lowercase hex, kind and status code
by their proto names, attributes and the resource's attributes as plain values.
Usage: otlp_collector.py OUT PORT"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

out_path, port = sys.argv[1], sys.argv[2]
lock = threading.Lock()


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value"):
        return MessageToDict(getattr(any_value, kind))
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def attributes(key_values):
    return {kv.key: value(kv.value) for kv in key_values}


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        lines = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "trace_state": span.trace_state,
                            "name": span.name,
                            "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                            "attributes": attributes(span.attributes),
                            "status": {
                                "code": trace_pb2.Status.StatusCode.Name(span.status.code),
                                "message": span.status.message,
                            },
                            "scope": scope_spans.scope.name,
                            "resource": resource,
                        }
                    )
        with lock, open(out_path, "a", encoding="utf-8") as out:
            for line in lines:
                out.write(json.dumps(line) + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print("listening", flush=True)
while True:
    time.sleep(3600)
