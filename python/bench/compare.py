"""Runs our SDK (ours_bench.py) and the reference (ref_bench.py) in alternating rounds
and prints a markdown table: scenario | ours | reference | ratio, medians over rounds
with min-max, plus loss/failure columns.

Each side of each round is a fresh subprocess (fresh node, fresh agents, no shared
runtime between the two SDKs); round r runs ours first when r is even, the reference
first when odd, so slow drift of the machine does not favour one side.

  python compare.py [--rounds 3] [--seconds 5] [--only p2p,rr,group,admit]
                    [--sides ours,ref] [--json] [--save-json FILE]
                    [--identity workload-api|shared-secret]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common as C  # noqa: E402

SIDES = {"ours": "ours_bench.py", "ref": "ref_bench.py"}

# (label, scenario, path to the value, path to the loss/failure figure, higher_is_better)
METRICS = [
    ("p2p reliable 1 KiB: msgs/s received", "p2p", ("msgs_per_s",), ("loss",), True),
    (f"request/reply @{C.RR_RATE:g}/s: p50 ms", "rr", ("p50_ms",), ("failed",), False),
    (f"request/reply @{C.RR_RATE:g}/s: p99 ms", "rr", ("p99_ms",), ("failed",), False),
    (f"request/reply @{C.RR_RATE:g}/s: completed/s", "rr", ("achieved_rate",), ("failed",), True),
    ("MLS group 1+3, 1 KiB: msgs/s to every member", "group", ("msgs_per_s",), ("loss",), True),
    ("MLS admit into group of 5: ms", "admit", ("5", "median_ms"), None, False),
    ("MLS admit into group of 20: ms", "admit", ("20", "median_ms"), None, False),
]


def dig(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def run_side(side: str, args) -> dict:
    py = args.python_ours if side == "ours" else args.python_ref
    cmd = [py, os.path.join(HERE, SIDES[side]), "--json", "--seconds", str(args.seconds)]
    if args.only:
        cmd += ["--only", args.only]
    if side == "ours" and args.identity:
        cmd += ["--identity", args.identity]
    only = C.parse_only(args.only)
    limit = sum(C.scenario_timeout(s, args.seconds) for s in only) + 180
    C.log(f"running {side}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE,
                           text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"{side} bench did not finish within {limit:.0f}s"}
    lines = [ln for ln in (p.stdout or "").splitlines() if ln.startswith("{")]
    if not lines:
        tail = (p.stderr or "").strip().splitlines()[-5:]
        return {"error": f"{side} bench exited {p.returncode} without results: {' | '.join(tail)}"}
    try:
        res = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        return {"error": f"{side} bench printed bad JSON: {e}"}
    res["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if not args.verbose and p.stderr:
        for ln in p.stderr.splitlines():
            if "ERROR" in ln:
                C.log(f"{side}: {ln.strip()}")
    return res


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def stats(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(rounds: list[dict], sides: list[str]) -> list[dict]:
    rows = []
    for label, scen, path, loss_path, higher in METRICS:
        row = {"metric": label, "scenario": scen, "higher_is_better": higher}
        for side in sides:
            vals, losses, errors = [], [], []
            for r in rounds:
                res = r.get(side) or {}
                sc = dig(res, ("scenarios", scen))
                if sc is None:
                    errors.append(res.get("error") or "not run")
                    continue
                if "error" in sc:
                    errors.append(sc["error"])
                    continue
                vals.append(dig(sc, path))
                if loss_path:
                    losses.append(dig(sc, loss_path))
            row[side] = {"stats": stats(vals), "values": vals, "loss": losses, "errors": errors}
        o, f = dig(row, ("ours", "stats", "median")), dig(row, ("ref", "stats", "median"))
        row["ratio"] = (o / f) if (o is not None and f) else None
        rows.append(row)
    return rows


def cell(side_row) -> str:
    if side_row is None:
        return "-"
    s = side_row["stats"]
    if s is None:
        err = side_row["errors"][0] if side_row["errors"] else "no data"
        return f"error: {err[:60]}"
    txt = fmt(s["median"])
    if s["n"] > 1:
        txt += f" ({fmt(s['min'])}–{fmt(s['max'])})"
    if side_row["errors"]:
        txt += f" [{len(side_row['errors'])} failed]"
    return txt


def loss_cell(side_row) -> str:
    if side_row is None or not side_row["loss"]:
        return "-"
    return "/".join(fmt(x) for x in side_row["loss"])


def table(rows, sides, meta) -> str:
    out = [f"Agent-level benchmark, {meta['rounds']} round(s) x {meta['seconds']} s; "
           f"reference: slim-bindings {meta.get('ref_version', '?')}; ours: slim-agents {meta.get('ours_version', '?')}",
           "",
           "| scenario | ours | reference | ratio ours/ref | loss ours | loss ref |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["ratio"]
        rtxt = "n/a" if ratio is None else f"{ratio:.2f}x"
        if ratio is not None:
            better = (ratio > 1) == r["higher_is_better"] if ratio != 1 else None
            rtxt += "" if better is None else (" (better)" if better else " (worse)")
        out.append(f"| {r['metric']} | {cell(r.get('ours')) if 'ours' in sides else '-'} | "
                   f"{cell(r.get('ref')) if 'ref' in sides else '-'} | {rtxt} | "
                   f"{loss_cell(r.get('ours'))} | {loss_cell(r.get('ref'))} |")
    out.append("")
    out.append("Medians over rounds (min–max). Loss: per round, messages sent but not received "
               "(slowest member for the group); for request/reply: failed requests.")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="ours vs reference, alternating rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=C.DEFAULT_SECONDS)
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(C.SCENARIOS))
    ap.add_argument("--sides", default="ours,ref", help="ours,ref (default) or just one")
    ap.add_argument("--identity", choices=("workload-api", "shared-secret"), default=None,
                    help="identity mode for our side (default workload-api)")
    ap.add_argument("--python-ours", default=sys.executable)
    ap.add_argument("--python-ref", default=sys.executable)
    ap.add_argument("--json", action="store_true", help="print the raw results and summary as JSON")
    ap.add_argument("--save-json", metavar="FILE", help="also write the raw results and summary as JSON to FILE")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the benches' progress output")
    args = ap.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    for s in sides:
        if s not in SIDES:
            raise SystemExit(f"unknown side {s!r}")
    C.parse_only(args.only)

    rounds = []
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else list(reversed(sides))
        rec = {"round": r + 1, "order": order}
        for side in order:
            rec[side] = run_side(side, args)
            if "error" in rec[side]:
                C.log(f"round {r + 1} {side}: {rec[side]['error']}")
        rounds.append(rec)

    meta = {"rounds": args.rounds, "seconds": args.seconds, "sides": sides}
    for side, key in (("ref", "ref_version"), ("ours", "ours_version")):
        for rr in rounds:
            v = dig(rr, (side, "version"))
            if v:
                meta[key] = v
                break
    rows = summarize(rounds, sides)
    if args.save_json:
        with open(args.save_json, "w") as f:
            json.dump({"meta": meta, "summary": rows, "rounds": rounds}, f, indent=2)
    if args.json:
        print(json.dumps({"meta": meta, "summary": rows, "rounds": rounds}, indent=2))
    else:
        print(table(rows, sides, meta))
    ok = all("error" not in (rr.get(s) or {}) for rr in rounds for s in sides)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
