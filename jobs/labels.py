"""List the catalog's disputed labels; with --evaluate, measure stored model versions against them.

    ./spark-submit.sh jobs/labels.py [--evaluate VERSION ...]

A label is disputed when the item's own title names another category's product type and not its
own (``lookalike.label_audit``; thresholds ``train.label_audit_min_items`` and
``train.label_audit_min_share``). Send the list to whoever owns the catalog's labels. With
``--evaluate``, each version's classifier is measured again on the holdout (``best``, ``latest``
or a version name): over all its queries, and over the queries whose label is not disputed.
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.training import disputed_labels, reevaluate_classifier


def _queries(measured: dict) -> str:
    """``queries | correct | accuracy`` cells; ``-`` where there were no queries."""
    if measured["accuracy"] is None:
        return f"{measured['holdout_items']} | - | -"
    return f"{measured['holdout_items']} | {round(measured['accuracy'] * measured['holdout_items'])} | {measured['accuracy']:.4f}"


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--evaluate", nargs="+", default=[], metavar="VERSION", help="model versions to measure again")
    args = parser.parse_args()
    spark, config, _ = start_job("labels", args)
    disputed = disputed_labels(spark, config).orderBy("category", "item_id").collect()
    print(f"{len(disputed)} labelled items whose title disputes their category\n")
    print("| item_id | category | article_type | title | title names |")
    print("|---|---|---|---|---|")
    for row in disputed:
        print(f"| {row['item_id']} | {row['category']} | {row['article_type']} | {row['title']} | "
              f"{', '.join(row['title_categories'])} ({', '.join(row['title_words'])}) |")
    if args.evaluate:
        print("\n| version | holdout queries | correct | accuracy | undisputed queries | correct | accuracy | disputed queries (correct) |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
    for version in args.evaluate:
        evaluation = reevaluate_classifier(spark, config, version)
        consistent = evaluation["title_consistent"]
        print(f"| {version} | {_queries(evaluation)} | {_queries(consistent)} | "
              f"{', '.join(consistent['disputed']) or '-'} ({consistent['disputed_correct']}) |")
    spark.stop()


if __name__ == "__main__":
    main()
