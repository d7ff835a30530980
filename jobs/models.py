"""List the model store's versions with their holdout figures; mark the latest, the best and the selected one.

    ./spark-submit.sh jobs/models.py [--set model.version=latest]
    ./spark-submit.sh jobs/models.py --compare VERSION VERSION
    ./spark-submit.sh jobs/models.py --seeds

With ``--seeds``, the versions grouped by how they were trained apart from ``model.seed``, and
each figure's mean, standard deviation and range over a group's versions
(``lookalike.model_store.seed_groups``): one seed is one draw, a setting is judged over several.

With ``--compare``, whether two versions are the same model instead: their scorers' weights bit
for bit and their metrics apart from timings (``lookalike.model_store.compare_bundles``). Two
runs of the train job with the same catalog, settings and ``model.seed`` give the same model.

"undisputed labels" is the classifier's accuracy over the holdout queries whose own title does not
dispute their label (``jobs/labels.py``); "-" for versions trained before the label audit.

The selected version is the one runs that do not train score with (``model.version``: best by
default, see docs/MODELS.md).
"""

from __future__ import annotations

from lookalike.cli import job_parser, start_job
from lookalike.model_store import (
    compare_bundles, differing_settings, load_manifest, load_metrics, load_scorer_from_bytes, model_root,
    read_scorer_bytes, registry, seed_groups,
)


_FIGURES = ("classifier_accuracy", "classifier_accuracy_title_consistent", "subcat_1nn", "at_p10", "at_p10_in_subcat")


def _figure(evaluation: dict | None, key: str) -> str:
    value = (evaluation or {}).get(key)
    return "-" if value is None else f"{value:.3f}"


def _compare(spark, config: dict, first: str, second: str) -> None:
    bundles = []
    for version in (first, second):
        manifest = load_manifest(spark, config, version)
        bundles += [load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest)), load_metrics(spark, config, version)]
    result = compare_bundles(*bundles)
    same = result["weights_equal"] and not result["differing_metrics"]
    print(f"{first} and {second}: {'the same model' if same else 'different models'}")
    print(f"weights: {result['differing_arrays']} of {result['weight_arrays']} arrays differ")
    print(f"metrics that differ (timings left out): {', '.join(result['differing_metrics']) or 'none'}")


def _spread(summary: dict | None) -> str:
    if summary is None:
        return "-"
    sd = "" if summary["sd"] is None else f" ± {summary['sd']:.4f}"
    return f"{summary['mean']:.4f}{sd} ({summary['min']:.3f}-{summary['max']:.3f})"


def _print_seed_groups(rows: list[dict]) -> None:
    groups = seed_groups(rows, _FIGURES)
    if not groups:
        print("no version records its settings and an evaluation: train one with the train job")
        return
    differing = differing_settings(groups)
    print(f"{len(groups)} group(s) of versions trained alike apart from model.seed"
          + (f"; they differ in {', '.join(differing)}" if differing else ""))
    print("| group | versions | seeds | " + " | ".join(_FIGURES) + " |")
    print("|---|---:|---|" + "---:|" * len(_FIGURES))
    for number, group in enumerate(groups, 1):
        told_apart = ", ".join(f"{key}={group['settings'].get(key)}" for key in differing)
        name = f"{number}" + (f" ({told_apart})" if told_apart else "")
        spreads = " | ".join(_spread(group["figures"].get(key)) for key in _FIGURES)
        print(f"| {name} | {len(group['versions'])} | {', '.join(map(str, group['seeds']))} | {spreads} |")
    print("each figure: mean ± sample standard deviation (min-max) over the group's versions")


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--compare", nargs=2, metavar="VERSION", help="two versions (best, latest or names) to compare")
    parser.add_argument("--seeds", action="store_true", help="each figure's mean and spread over versions trained alike")
    args = parser.parse_args()
    spark, config, _ = start_job("models", args)
    if args.compare:
        _compare(spark, config, *args.compare)
        spark.stop()
        return
    rows = registry(spark, config)
    if args.seeds:
        _print_seed_groups(rows)
    elif not rows:
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
