"""Render ``python -m bench`` output (JSON lines) as the Markdown table used in bench/README.md.

``bench/run > results.jsonl; python -m bench.table results.jsonl``
"""

from __future__ import annotations

import json
import sys


def fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def main() -> None:
    with open(sys.argv[1]) as f:
        lines = [json.loads(ln) for ln in f if ln.strip().startswith("{")]
    print("| ID | value | baseline | ratio | target | unit | ok |")
    print("|---|---|---|---|---|---|---|")
    for r in lines:
        print(
            f"| {r['id']} | {fmt(r['value'])} | {fmt(r['baseline'])} | {fmt(r['ratio'])} | {fmt(r['target'])} | {r['unit']} | {'yes' if r['ok'] else 'NO'} |"
        )


if __name__ == "__main__":
    sys.exit(main())
