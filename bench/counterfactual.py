"""Bench: off-policy evaluation against ground truth on the reference traces. The shipped policy
is served (in simulation, with the service's own exploration draws) at one λ with route
exploration ε; from each seed's log the policy at another λ is estimated (IPS, SNIPS, DR) and
compared with its true replay on the same held-out items.

    python bench/counterfactual.py --eps 0.3 0.5 --seeds 20 --out bench/results/counterfactual.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from confroute.manifest import Manifest
from confroute.policies import load_policy
from training.counterfactual import ground_truth_check, reference_arrays

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--version", type=Path, default=ROOT / "models" / "current")
    ap.add_argument("--traces", type=Path, default=ROOT / "data" / "reference-traces")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--pairs", default="0.3:0.5,0.5:0.3", help="log λ:target λ, comma-separated")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("var/counterfactual.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    arrays = reference_arrays(args.version, [args.traces])
    policy = load_policy(Manifest.load(args.version).policy)  # type: ignore[arg-type]
    runs = []
    for eps in args.eps:
        for pair in args.pairs.split(","):
            log_lam, target_lam = (float(x) for x in pair.split(":"))
            r = ground_truth_check(arrays, policy, log_lam, target_lam, eps, range(args.seeds))
            r.pop("per_seed")
            runs.append(r)
            print(json.dumps({k: r[k] for k in ("eps", "log_lambda", "target_lambda", "truth",
                                                "intervals_holding_truth")}))
    out = {"command": "python bench/counterfactual.py " + " ".join(
        [f"--eps {' '.join(map(str, args.eps))}", f"--pairs {args.pairs}",
         f"--seeds {args.seeds}"]),
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "version": Manifest.load(args.version).version, "seconds": round(time.perf_counter() - t0, 1),
        "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
