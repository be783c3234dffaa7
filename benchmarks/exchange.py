"""Blob exchange throughput: one peer fetches blobs from another over p2pd streams.

Two hivemind DHT nodes (each with its own p2pd) on 127.0.0.1; the fetcher downloads the
same blob several times through :class:`swarmtrain.peer.exchange.service.Exchange` (chunked
frames, BLAKE2b verification included). Prints ONE JSON document.

    python benchmarks/exchange.py [--mib 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time

from hivemind import DHT

from swarmtrain.peer.exchange.service import Exchange, blob_digest

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=64, help="blob size in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = random.Random(0).randbytes(args.mib << 20)
    digest = blob_digest(data).hex()
    server_dht = DHT(start=True, host_maddrs=LOCAL)
    client_dht = DHT(start=True, host_maddrs=LOCAL, initial_peers=[str(a) for a in server_dht.get_visible_maddrs()])
    server = client = None
    try:
        server, client = Exchange.start(server_dht), Exchange.start(client_dht)
        server.serve("update", digest, data)
        rates = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            got = client.fetch(server.peer_id, "update", digest, max_size=len(data), timeout=120)
            rates.append(args.mib / (time.perf_counter() - started))
            assert got == data
        print(json.dumps({
            "benchmark": "exchange", "command": " ".join(["python", *sys.argv]),
            "blob_mib": args.mib, "mib_per_s": [round(r, 1) for r in rates],
            "best_mib_per_s": round(max(rates), 1), "loop": client.loop_name,
            "machine": {"python": platform.python_version(), "cpu": platform.machine()},
        }, indent=2))
    finally:
        for exchange in (client, server):
            if exchange is not None:
                exchange.close()
        client_dht.shutdown()
        server_dht.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
