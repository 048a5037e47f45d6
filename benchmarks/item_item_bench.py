"""recommend's item-item source per request (#33): a user's scores by the length of their
history, as served against the dense product of the same weights, and the whole recommend, on a
published version, in-process.

    .venv/bin/python benchmarks/item_item_bench.py --home /tmp/ab/on/ml-1m-full --out /tmp/ii.md

**What.** The newest ``recommend`` version of ``--home``'s Triton repository, loaded as its stub
loads it (``serving.runtime.RecommendStage``). Users: the one at each quantile of ``QUANTILES``
of the exported history length (``seen.parquet``), then ``--users`` drawn with a fixed seed.
Per user, one request at a time, ``--repeat`` calls of each, median ms:

- **served**: the item-item scores as the stub computes them (``ItemItemScores``: each history
  item's kept weights gathered and summed, ``models.item_item.ItemItemWeights.scores``);
- **dense product** (the reference, in the same run): the same weights as one [items, items]
  matrix times the history (``ItemItemWeights.densified``, as training scores every validation
  user), which must give the same scores (checked). Serving cannot hold it at large catalogues
  (400 MB at 10,000 items a stub);
- **recommend**: the whole request (``RecommendStage.recommend``, k 10).

Then recommend's p50/p99 over the drawn users, and the load before and after. One thread, no
gRPC: what a stub instance does for a request. Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.recommend_bench import code_state, newest_version_dir, uptime  # noqa: E402
from recflow.config import load_settings  # noqa: E402
from recflow.vocabulary import USER_ID  # noqa: E402
from serving.repository import EndpointNames  # noqa: E402
from serving.runtime import SEEN, ItemItemScores, RecommendStage  # noqa: E402

QUANTILES = (0.5, 0.9, 0.99, 1.0)
K = 10


def median_ms(call: Callable[[], object], repeat: int) -> float:
    call()  # first call: caches and allocator warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    before = uptime()

    settings = load_settings(overrides=[f"paths.home={args.home}"])
    endpoint = EndpointNames(settings.serving.model_prefix)
    version_dir = newest_version_dir(settings.paths.triton_repo / endpoint.model("recommend"))
    stage = RecommendStage(version_dir)
    if stage.item_item is None:
        sys.exit(f"{version_dir} has no item-item source")
    served = stage.item_item
    dense = ItemItemScores(version_dir, served.weights.densified())

    lengths = pd.read_parquet(version_dir / SEEN, columns=[USER_ID])[USER_ID].value_counts()
    at_quantiles = [
        int(lengths.index[(lengths - lengths.quantile(q)).abs().argmin()]) for q in QUANTILES
    ]
    drawn = np.random.default_rng(0).choice(lengths.index.to_numpy(), args.users, replace=False)

    rows, latencies = [], []
    for n, user in enumerate([*at_quantiles, *map(int, drawn)]):
        ids = np.array([user], np.int64)
        interactions = stage.retrieval.interactions(ids)
        np.testing.assert_allclose(served(1, interactions), dense(1, interactions), atol=1e-4)
        row = {
            "user": user,
            "history": len(interactions[1]),
            "served": median_ms(lambda i=interactions: served(1, i), args.repeat),
            "dense": median_ms(lambda i=interactions: dense(1, i), args.repeat),
            "recommend": median_ms(lambda i=ids: stage.recommend(i, K), args.repeat),
        }
        if n < len(QUANTILES):
            rows.append(row)
        else:
            latencies.append(row["recommend"])
    after = uptime()

    lines = [
        "# recommend's item-item source per request (#33)",
        "",
        f"`python {shlex.join(sys.argv)}`",
        "",
        *code_state(),
        "",
        f"Version: `{version_dir}` ({len(served.weights.items):,} items with weights, "
        f"{len(served.weights.weights):,} kept; recency decay {served.weights.recency_decay}); "
        f"{len(lengths):,} users with an exported history.",
        "",
        f"- before: `{before}`",
        f"- after: `{after}`",
        "",
        "| user (history quantile) | history items | served ms | dense product ms | recommend ms |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['user']} ({q:.0%}) | {r['history']:,} | {r['served']:.2f} | "
            f"{r['dense']:.2f} | {r['recommend']:.2f} |"
            for q, r in zip(QUANTILES, rows, strict=True)
        ),
        "",
        f"recommend over {len(latencies)} drawn users (each its median of {args.repeat} calls): "
        f"p50 {np.percentile(latencies, 50):.2f} ms, p99 {np.percentile(latencies, 99):.2f} ms.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
