"""Cluster each category's published embeddings (MLlib KMeans, k by silhouette) into ``item_clusters``.

    ./spark-submit.sh jobs/clusters.py [--set clusters.k_values=[2,4,8]]

Run after the refresh; clustering the same publication again adds no table version.
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.clusters import publish_clusters


def main() -> None:
    args = job_parser(__doc__).parse_args()
    spark, config, _ = start_job("clusters", args)
    result = publish_clusters(spark, config)
    chosen = ", ".join(f"{category} k={k}" for category, k in sorted(result.chosen_k.items()))
    print(f"run {result.run_id}: {result.items} items clustered in {len(result.chosen_k)} categories ({chosen})")
    spark.stop()


if __name__ == "__main__":
    main()
