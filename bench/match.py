"""Matching throughput with 10 and with 10,000 rules (issue [3]): the compiled matcher's
cost per message must not grow with the number of rules. Prints a table and writes JSON
to bench/results/."""

from __future__ import annotations

import json
import platform
import random
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from adapter.mapping import MappingSet, compile_text

RESULTS = Path(__file__).resolve().parent / "results"
MESSAGES = 200_000
PAYLOAD = (
    b'{"Time":"2018-02-15T17:37:10","ENERGY":{"Total":6.294,"Power":2635,"Voltage":227,'
    b'"Current":11.661}}'
)


def rule_set(count: int) -> MappingSet:
    """`count` rules, one per site, each a Tasmota-style SENSOR rule with readings."""
    lines = ["family: bench", "rules:"]
    for i in range(count):
        lines += [
            f"  - id: site{i}-sensor",
            f'    topic: "site{i}/tele/{{topic}}/SENSOR"',
            f'    device: {{uri: "bench:site{i}:{{topic}}"}}',
            "    readings: {power: ENERGY.Power, voltage: ENERGY.Voltage}",
        ]
    rules, commands = compile_text("\n".join(lines) + "\n", "bench.yaml")
    return MappingSet(rules, commands)


def measure(mappings: MappingSet, count: int, full: bool) -> float:
    rng = random.Random(count)
    topics = [
        f"site{rng.randrange(count)}/tele/dev{rng.randrange(2000)}/SENSOR" for _ in range(5000)
    ]
    now = datetime.now(UTC)
    start = time.perf_counter()
    for i in range(MESSAGES):
        topic = topics[i % len(topics)]
        if full:
            mappings.map(topic, PAYLOAD, now)
        else:
            mappings.matches(topic)  # what the forwarder pays per message
    return MESSAGES / (time.perf_counter() - start)


def main() -> None:
    rows = []
    for full in (False, True):
        rates = {}
        for count in (10, 10_000):
            mappings = rule_set(count)
            measure(mappings, count, full)  # warm-up
            rates[count] = max(measure(mappings, count, full) for _ in range(3))
        ratio = max(rates.values()) / min(rates.values())
        rows.append(
            {
                "what": "map (match + decode + readings)" if full else "match",
                "rules_10_per_s": round(rates[10]),
                "rules_10000_per_s": round(rates[10_000]),
                "slower_vs_faster": round(ratio, 3),
            }
        )
    print(f"{'stage':34} {'10 rules/s':>12} {'10,000 rules/s':>15} {'ratio':>7}")
    for row in rows:
        print(
            f"{row['what']:34} {row['rules_10_per_s']:>12,} {row['rules_10000_per_s']:>15,} "
            f"{row['slower_vs_faster']:>7}"
        )
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"match-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "revision": revision,
                "machine": platform.platform(),
                "python": platform.python_version(),
                "messages": MESSAGES,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
