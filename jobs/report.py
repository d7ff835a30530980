"""Write a self-contained HTML report on the published run: sample look-alike grids, t-SNE map, model and quality figures.

    ./spark-submit.sh jobs/report.py [--output hdfs:///reports/latest.html]

Default output: <storage.root>/reports/<run_id>/index.html. Photos and plots are embedded, so the
file opens anywhere on its own. Settings: [report] sample_items, grid_k, tsne_items.
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.report import write_report


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--output", default=None, help="where to write the HTML, any Hadoop path (default: under the store)")
    args = parser.parse_args()
    spark, config, _ = start_job("report", args)
    uri = write_report(spark, config, output_uri=args.output)
    print(f"report written to {uri}")
    spark.stop()


if __name__ == "__main__":
    main()
