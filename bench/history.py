"""The hourly average over 1,000,000 readings of one device (issue [5]), against a plain
Python baseline over the same rows in the same run. Prints a table, writes JSON."""

from __future__ import annotations

import json
import platform
import random
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from adapter.history import HistoryStore, Reading, parse_query

RESULTS = Path(__file__).resolve().parent / "results"
READINGS = 1_000_000
SPAN = 30 * 86400.0  # a month of readings, one every ~2.6 s


def main() -> None:
    rng = random.Random(1)
    now = time.time()
    start = now - SPAN
    rows = [
        Reading(
            "tasmota:bench", start + i * SPAN / READINGS, {"power": rng.uniform(0, 3000)}, "power"
        )
        for i in range(READINGS)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore(Path(tmp) / "history.sqlite3", retention=10 * SPAN)
        began = time.perf_counter()
        for i in range(0, READINGS, 10_000):
            store.record(rows[i : i + 10_000])
        store.fold()  # what the store does within FOLD_EVERY seconds
        insert = time.perf_counter() - began

        query = parse_query({"granularity": "hour", "time_window": "720h"})

        def best_of_5() -> tuple[float, list[dict[str, object]]]:
            timings = []
            for _ in range(5):
                began = time.perf_counter()
                result = store.average("tasmota:bench", query, now)
                timings.append(time.perf_counter() - began)
            return min(timings), result

        best, result = best_of_5()
        # A device that is sending: its newest readings are still staged (the last
        # FOLD_EVERY seconds), and the query reads both tables in the index's order.
        store.record([Reading("tasmota:bench", now - 1, {"power": 1.0}, "power")])
        staged_best, _ = best_of_5()
        store.close()

    began = time.perf_counter()
    buckets: dict[int, list[float]] = {}
    for reading in rows:
        key = int(reading.ts) // 3600 * 3600
        entry = buckets.setdefault(key, [0.0, 0.0])
        entry[0] += reading.values["power"]
        entry[1] += 1
    baseline = time.perf_counter() - began

    report = {
        "readings": READINGS,
        "buckets": len(result),
        "insert_s": round(insert, 3),
        "hourly_average_s": round(best, 4),
        "hourly_average_with_staged_s": round(staged_best, 4),
        "python_baseline_s": round(baseline, 4),
        "ratio_to_baseline": round(best / baseline, 3),
        "revision": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "machine": platform.platform(),
    }
    print(
        f"hourly average over {READINGS:,} readings: {best * 1000:.0f} ms "
        f"({len(result)} buckets; best of 5), a Python loop over the same rows: "
        f"{baseline * 1000:.0f} ms (ratio {report['ratio_to_baseline']}); with the newest "
        f"readings not folded yet: {staged_best * 1000:.0f} ms; writing them took {insert:.1f} s"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"history-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
