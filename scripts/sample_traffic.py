"""Send reference questions to a running confroute chat endpoint, each followed by its gold
feedback, so that `confroute report traffic` has a labeled log to read.

    python scripts/sample_traffic.py --url http://127.0.0.1:8000 --start 100 --n 15 --lams 0.3,0.5

Questions: MAWPS AddSub then SingleOp items [start, start + n) from ../shared/data/mawps; the
λ of request i is lams[i % len(lams)]. Prints one line per request and, last, the sum of the
replies' `router.cost` (the figure the report's cost should equal on a fresh log).
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mawps"


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def gold(target: float) -> str:
    return str(int(target)) if float(target).is_integer() else str(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--n", type=int, default=15, help="items per set (AddSub, SingleOp)")
    ap.add_argument("--lams", default="0.3,0.5", help="comma-separated cost_quality_tradeoff values")
    a = ap.parse_args()
    lams = [float(x) for x in a.lams.split(",")]
    items = []
    for name in ("addsub", "singleop"):
        rows = (DATA / f"{name}.jsonl").read_text().splitlines()
        items += [json.loads(line) for line in rows[a.start:a.start + a.n]]
    total = 0.0
    for i, item in enumerate(items):
        lam = lams[i % len(lams)]
        reply = post(f"{a.url}/v1/chat/completions", {
            "model": f"confroute:{lam}", "messages": [{"role": "user", "content": item["input"]}]})
        router = reply["router"]
        total += router["cost"]
        post(f"{a.url}/v1/feedback", {"request_id": router["request_id"], "gold": gold(item["target"])})
        print(i, lam, router["model"], len(router["tried"]), round(router["cost"], 3), reply["usage"],
              flush=True)
    print(json.dumps({"requests": len(items), "sum_router_cost": round(total, 4)}))


if __name__ == "__main__":
    main()
