#!/usr/bin/env python3
"""A tiny OTLP/gRPC trace collector for tests and benchmarks.

Listens on 127.0.0.1 (port 0 picks a free one), prints `listening PORT` on stdout once ready,
and appends one JSON object per received span to OUT: trace and span ids in hex, the parent span
id ("" for a root), name, service.name of its resource, start/end in unix nanoseconds and the
attributes. With --count-only it writes nothing per span and prints `spans N` on SIGTERM.

Needs grpcio and opentelemetry-proto (scripts/setup installs them).
"""
import argparse
import json
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out, count_only):
        self.out = out
        self.count_only = count_only
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        lines = []
        n = 0
        for rs in request.resource_spans:
            service = ""
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    service = value(kv.value)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    n += 1
                    if self.count_only:
                        continue
                    lines.append(json.dumps({
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "service": service,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                    }))
        with self.lock:
            self.spans += n
            if lines:
                self.out.write("\n".join(lines) + "\n")
                self.out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", default="/dev/null")
    p.add_argument("--count-only", action="store_true")
    args = p.parse_args()
    out = open(args.out, "a", encoding="utf-8")
    traces = Traces(out, args.count_only)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(1)
    print(f"spans {traces.spans}", flush=True)
    out.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
