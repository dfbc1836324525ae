#!/usr/bin/env python3
"""Latency of 1-item POST /v1/embeddings against a running `semflow serve` on 127.0.0.1:8080
(BENCHMARKS.md §5): 1,000 sequential keep-alive requests, same input (cache hit) and distinct inputs."""
import http.client, json, time, sys
c = http.client.HTTPConnection("127.0.0.1", 8080)
def run(n, distinct):
    lat = []
    for i in range(n):
        body = json.dumps({"input": f"hello {i}" if distinct else "hello"})
        t = time.perf_counter()
        c.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        lat.append((time.perf_counter() - t) * 1000)
        assert r.status == 200
    lat.sort()
    return lat[len(lat)//2], lat[int(len(lat)*0.99)]
run(50, False)
print("same input (cache hit): p50 %.2f ms p99 %.2f ms" % run(1000, False))
print("distinct inputs (tiny model inference): p50 %.2f ms p99 %.2f ms" % run(1000, True))
