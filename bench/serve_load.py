#!/usr/bin/env python3
"""A bounded load test of `reclmis serve` on loopback: latency, failures and memory.

Starts the server, warms it up, then sends ROUNDS rounds of N requests with K in flight (each a
multipart POST /api/segment of one image, notes alternating between two), and records the
latency percentiles, every status code, and the server's resident memory after each round. A
leak would show as RSS growing round after round; the record says by how much it did.

    python3 bench/serve_load.py --reclmis target/release/reclmis --checkpoint reclmis-demo/run \
        --requests 200 --in-flight 8 --out bench/results/serve-load-X/demo.json

Without --image, the server's own example phantom and its two notes are used.
"""

import argparse
import base64
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def multipart(image, name, note):
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode(),
        image,
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\n'.encode(),
        note.encode(),
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def one_request(host, port, content_type, body):
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=300)
    try:
        conn.request("POST", "/api/segment", body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        data = resp.read()
        status = resp.status
        ok = status == 200 and b'"mask"' in data
    except OSError as e:
        status, ok = f"{type(e).__name__}", False
    finally:
        conn.close()
    return time.perf_counter() - t0, status, ok


def run_round(host, port, bodies, n, in_flight):
    latencies, statuses = [], {}
    lock = threading.Lock()
    next_index = [0]

    def worker():
        while True:
            with lock:
                i = next_index[0]
                if i >= n:
                    return
                next_index[0] += 1
            content_type, body = bodies[i % len(bodies)]
            dt, status, ok = one_request(host, port, content_type, body)
            with lock:
                latencies.append(dt)
                key = str(status) if ok or status != 200 else "200-but-no-mask"
                statuses[key] = statuses.get(key, 0) + 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": n,
        "in_flight": in_flight,
        "wall_s": round(wall, 3),
        "throughput_per_s": round(n / wall, 2),
        "latency_ms": {
            "p50": round(q[49] * 1e3, 1),
            "p90": round(q[89] * 1e3, 1),
            "p99": round(q[98] * 1e3, 1),
            "max": round(max(latencies) * 1e3, 1),
        },
        "statuses": statuses,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reclmis", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", help="image file to send (default: the server's example)")
    ap.add_argument("--notes", nargs=2, help="two notes to alternate (default: the example's)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="the server's --workers")
    ap.add_argument("--out", help="JSON record to write")
    args = ap.parse_args()

    server = subprocess.Popen(
        [
            args.reclmis,
            "serve",
            "--checkpoint",
            args.checkpoint,
            "--addr",
            "127.0.0.1:0",
            "--workers",
            str(args.workers),
            "--queue",
            str(max(16, args.in_flight)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        if "http://" not in line:
            print(f"the server did not start: {line!r}", file=sys.stderr)
            return 1
        hostport = line.split("http://")[1].split("/")[0]
        host, port = hostport.rsplit(":", 1)
        port = int(port)
        base = f"http://{hostport}"
        model = json.load(urllib.request.urlopen(base + "/api/model"))
        if args.image:
            with open(args.image, "rb") as f:
                image = f.read()
            name = os.path.basename(args.image)
            notes = args.notes or ["", ""]
        else:
            ex = json.load(urllib.request.urlopen(base + "/api/example"))
            image = base64.b64decode(ex["image"].split(",", 1)[1])
            name = ex["name"]
            notes = args.notes or [ex["note"], ex["other_note"]]
        bodies = [multipart(image, name, n) for n in notes]

        warm = run_round(host, port, bodies, 10, 1)
        rss = [round(rss_mb(server.pid), 1)]
        rounds = []
        for _ in range(args.rounds):
            rounds.append(run_round(host, port, bodies, args.requests, args.in_flight))
            rss.append(round(rss_mb(server.pid), 1))
        batch1 = run_round(host, port, bodies, 20, 1)
        failures = sum(
            c for r in rounds + [batch1] for s, c in r["statuses"].items() if s != "200"
        )
        record = {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
            "checkpoint": os.path.basename(os.path.normpath(args.checkpoint)),
            "image_size": model["image_size"],
            "parameters": model["parameters"]["inference_with_explain"],
            "image_bytes": len(image),
            "notes": notes,
            "server_workers": args.workers,
            "warmup_one_at_a_time": warm,
            "rounds": rounds,
            "one_at_a_time_after": batch1,
            "rss_mb_after_warmup_then_each_round": rss,
            "rss_growth_last_round_mb": round(rss[-1] - rss[-2], 1),
            "failures": failures,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
