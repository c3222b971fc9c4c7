"""One table from a gpu_suite.sh run: python benchmarks/suite_table.py OUT_DIR.

Reads OUT_DIR/{check,bench,peer}.jsonl and runs.tsv; prints the table and writes table.md and
suite.json (every result, the targets of issue #16 and which were met) beside them."""

from __future__ import annotations

import json
import os
import sys

TARGETS = {3: 750.0, 5: 60.0}  # steps/s at M=3 d=1024 h=2048 B=256 and M=5 B=1024 (issue #16)
MFU_TARGET, COMPILE_TARGET = 0.60, 15.0


def _read(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          pass
  return rows


def build(out: str) -> tuple[str, dict]:
  checks = _read(os.path.join(out, "check.jsonl"))
  bench = _read(os.path.join(out, "bench.jsonl"))
  peers = _read(os.path.join(out, "peer.jsonl"))
  runs = []
  if os.path.exists(os.path.join(out, "runs.tsv")):
    with open(os.path.join(out, "runs.tsv")) as f:
      runs = [
        dict(zip(("name", "rc", "seconds", "limit"), line.rstrip("\n").split("\t")))
        for line in f
        if line.strip()
      ]
  gemms = [r for r in bench if "gemm_peak_tflops" in r]
  steps = [r for r in bench if "steps_per_s" in r]
  lines = []
  device = steps[0]["device"] if steps else (gemms[0]["device"] if gemms else "?")
  lines.append(f"## Step benchmark, {device}")
  for g in gemms:
    lines.append(
      f"- GEMM {g['dtype']} measured in the step_bench process"
      f"{' (' + g['tag'] + ')' if g.get('tag') else ''}: "
      f"{g['gemm_peak_tflops']:.4g} TFLOP/s (jax {g.get('jax', '?')})"
    )
  lines.append("")
  lines.append("Accuracy against a float32 reference on the same device (step_check.py):")
  lines.append("")
  lines.append(
    "| variant | loss rel err | grad rel err (worst leaf) "
    "| update rel err after steps (worst leaf) |"
  )
  lines.append("|---|---|---|---|")
  for c in checks:
    lines.append(
      f"| {c['check']} | {c['loss_rel']:.2e} "
      f"| {c['grad_rel']:.2e} ({c['grad_rel_worst_leaf']:.2e}) | "
      f"{c['update_rel']:.2e} ({c['update_rel_worst_leaf']:.2e}) |"
    )
  if not checks:
    lines.append("| (no accuracy results) | | | |")
  lines.append("")
  lines.append(
    "| M | B | impl / variant | steps/s | step ms | model TFLOP/s | MFU "
    "| compile s | setup s | target |"
  )
  lines.append("|---|---|---|---|---|---|---|---|---|---|")
  met = {}
  for r in sorted(
    steps + peers, key=lambda r: (r["M"], r["B"], r.get("impl", "graphbridge") != "graphbridge")
  ):
    impl = r.get("impl", "graphbridge")
    target = TARGETS.get(r["M"]) if r["d"] == 1024 and r["h"] == 2048 else None
    if impl == "peer_torch":
      name = f"PyTorch peer ({r['device']}, {r['dtype']})"
      mfu = compile_s = setup_s = "-"
      warm = f"warm-up {r['warmup_s']:.1f}"
      compile_s = warm
    else:
      name = f"graphbridge {r['variant']}" + (f" [{r['tag']}]" if r.get("tag") else "")
      mfu = f"{100 * r['mfu']:.1f}%"
      compile_s = f"{r['compile_s']:.1f}"
      setup_s = f"{r['setup_s']:.1f}"
    verdict = ""
    if target is not None:
      ok = r["steps_per_s"] >= target
      if impl != "peer_torch":
        ok_mfu = r["M"] != 5 or r["mfu"] >= MFU_TARGET
        ok_compile = r["compile_s"] <= COMPILE_TARGET
        verdict = (
          f">= {target:g}: {'yes' if ok else 'no'}"
          + (f", MFU>=60%: {'yes' if ok_mfu else 'no'}" if r["M"] == 5 else "")
          + f", compile<=15s: {'yes' if ok_compile else 'no'}"
        )
        met[f"M{r['M']} {r['variant']}{' ' + r['tag'] if r.get('tag') else ''}"] = bool(
          ok and ok_mfu and ok_compile
        )
      else:
        verdict = f"{r['steps_per_s'] / target:.2f}x target"
    lines.append(
      f"| {r['M']} | {r['B']} | {name} | {r['steps_per_s']:.1f} | {r['step_ms']:.2f} | "
      f"{r['model_tflops']:.4g} | {mfu} | {compile_s} | {setup_s} | {verdict} |"
    )
  for M in sorted({r["M"] for r in steps}):
    ours = [r for r in steps if r["M"] == M]
    peer = [r for r in peers if r["M"] == M]
    if ours and peer:
      best = max(ours, key=lambda r: r["steps_per_s"])
      lines.append(
        f"\nM={M}: best graphbridge ({best['variant']}) {best['steps_per_s']:.1f} steps/s = "
        f"{best['steps_per_s'] / peer[0]['steps_per_s']:.2f}x the PyTorch peer"
      )
  if runs:
    lines.append(
      "\nSub-runs: " + ", ".join(f"{r['name']} rc={r['rc']} {r['seconds']}s" for r in runs)
    )
  text = "\n".join(lines)
  return text, {
    "checks": checks,
    "bench": bench,
    "peer": peers,
    "runs": runs,
    "targets_met": met,
    "targets": {"steps_per_s": TARGETS, "mfu_m5": MFU_TARGET, "compile_s": COMPILE_TARGET},
  }


def main(argv) -> int:
  out = argv[1] if len(argv) > 1 else os.environ.get("OUT", "/tmp/out")
  text, data = build(out)
  print(text, flush=True)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out, "suite.json"), "w") as f:
    json.dump(data, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
