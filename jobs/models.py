"""List the model store's versions with their holdout figures; mark the latest, the best and the selected one.

    ./spark-submit.sh jobs/models.py [--set model.version=latest]

"undisputed labels" is the classifier's accuracy over the holdout queries whose own title does not
dispute their label (``jobs/labels.py``); "-" for versions trained before the label audit.

The selected version is the one runs that do not train score with (``model.version``: best by
default, see docs/MODELS.md).
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.model_store import model_root, registry


_FIGURES = ("classifier_accuracy", "classifier_accuracy_title_consistent", "subcat_1nn", "at_p10", "at_p10_in_subcat")


def _figure(evaluation: dict | None, key: str) -> str:
    value = (evaluation or {}).get(key)
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    args = job_parser(__doc__).parse_args()
    spark, config, _ = start_job("models", args)
    rows = registry(spark, config)
    if not rows:
        print(f"no trained model in {model_root(config)}: run the train job first")
    else:
        print("| version | embedding | px | dim | classes | classifier acc. | undisputed labels | 1-NN acc. | P@10 "
              "| P@10 within category | |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for row in rows:
            marks = ", ".join(name for name in ("selected", "best", "latest") if row[name])
            figures = " | ".join(_figure(row["evaluation"], key) for key in _FIGURES)
            print(f"| {row['version']} | {row['embedding']} | {row['image_size']} | {row['embedding_dim']} | "
                  f"{row['classes']} | {figures} | {marks} |")
    spark.stop()


if __name__ == "__main__":
    main()
