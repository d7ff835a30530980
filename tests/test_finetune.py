"""The lite0_finetuned option: pretrained Lite0 trained on the catalog through Petastorm, measured on the fixed holdout."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from benchmark_module import load_benchmark
from pyspark.testing import assertDataFrameEqual

from lookalike.config import load_config
from lookalike.demo_catalog import build_demo_catalog
from lookalike.holdout import split_of
from lookalike.images import decode_image
from lookalike.ingest import ingest_catalog
from lookalike.model_store import compare_bundles, load_manifest, load_metrics, load_scorer_from_bytes, read_scorer_bytes
from lookalike.training import disputed_labels, reevaluate_classifier, train_models

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SIZE = 64
FROM_BLOCK = 14
PSEUDO_LABELLED = 30  # of the subset's 50 unlabelled photos


@pytest.fixture(scope="module")
def finetuned(spark, photo_subset: Path, tmp_path_factory: pytest.TempPathFactory):
    """One fine-tuning run (one epoch, 64 px, then two rounds of one epoch of self-training) on the ~200 real photos of the test subset."""
    return _ingest_and_train(spark, photo_subset, tmp_path_factory.mktemp("finetune"))


def _ingest_and_train(spark, photo_subset: Path, work: Path, *overrides: str):
    config = load_config(
        "test",
        [
            f"storage.root={work / 'store'}", f"catalog.image_root={photo_subset}", "model.embedding=lite0_finetuned",
            f"model.image_size={SIZE}", "train.finetune_epochs=1", f"train.finetune_from_block={FROM_BLOCK}",
            "train.min_article_type_count=3", "train.self_training_rounds=2", "train.self_training_epochs=1",
            "train.pseudo_label_threshold=0.0",
            f"train.max_pseudo_label_items={PSEUDO_LABELLED}",
            *overrides,
        ],
        conf_dir=REPO / "conf",
    )
    catalog = work / "catalog.csv"
    build_demo_catalog(photo_subset, catalog, seed=5)
    ingest_catalog(spark, config, str(catalog), run_id="finetune-run")
    manifest, metrics = train_models(spark, config)
    rows = list(csv.DictReader(open(catalog, encoding="utf-8")))
    return config, manifest, metrics, rows


def test_the_bundle_scores_with_the_finetuned_network(spark, finetuned, photo_subset: Path):
    """The saved scorer (Keras safe mode) gives category probabilities and unit embeddings of the shared layer."""
    config, manifest, metrics, rows = finetuned
    assert load_manifest(spark, config) == manifest
    assert (manifest.embedding, manifest.image_size, manifest.embedding_dim) == ("lite0_finetuned", SIZE, 32)
    scorer = load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest))
    pixels = np.stack([decode_image((photo_subset / r["image_uri"]).read_bytes(), SIZE) for r in rows[:4]]).astype(np.float32)
    out = scorer.predict(pixels, verbose=0)
    assert out["probabilities"].shape == (4, len(manifest.classes))
    assert np.allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)
    # Augmentation is training-only: the same photos score the same twice.
    assert np.array_equal(scorer.predict(pixels, verbose=0)["embedding"], out["embedding"])


def test_only_the_later_blocks_were_trained(spark, finetuned):
    """Blocks before finetune_from_block keep the ImageNet weights (converted into the store) exactly; the trained ones moved."""
    from lookalike.model_store import pretrained_lite0
    from lookalike.pretrained import load_pretrained_lite0

    config, manifest, metrics, _ = finetuned
    imagenet, source = pretrained_lite0(spark, config)
    assert metrics["pretrained"] == source  # the version records which conversion it started from
    scorer = load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest))
    backbone = next(layer for layer in scorer._flatten_layers() if layer.name == "efficientnet_lite0_features")
    pretrained = load_pretrained_lite0(include_top=False, image_size=SIZE, converted=imagenet)
    frozen, moved = [], []
    for layer in pretrained.layers:
        if not layer.weights:
            continue
        trained = backbone.get_layer(layer.name)
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), trained.get_weights()))
        parts = layer.name.split(".")
        if parts[0] == "blocks" and int(parts[1]) < FROM_BLOCK or parts[0] in ("conv_stem", "bn0"):
            frozen.append(same)
        elif parts[0] in ("conv_head", "bn1") or parts[0] == "blocks":
            moved.append(not same)
    assert frozen and all(frozen)
    assert moved and all(moved)


def test_metrics_measure_the_embedding_on_the_fixed_holdout(finetuned):
    """The evaluation's queries are the labelled holdout items of the fixed split, never trained on."""
    config, manifest, metrics, rows = finetuned
    labelled = [r for r in rows if r["category"] and r["article_type"] and r["category"] in manifest.classes]
    fractions = {k: float(config["model"][k]) for k in ("holdout_fraction", "validation_fraction")}
    split = {r["item_id"]: split_of(r["item_id"], **fractions) for r in rows}
    evaluation = metrics["evaluation"]
    holdout_labelled = [r for r in rows if r["category"] and r["article_type"] and split[r["item_id"]] == "holdout"]
    assert evaluation["queries"] == len(holdout_labelled) > 0
    assert evaluation["candidates"] == sum(1 for r in rows if r["category"] and r["article_type"]) - len(holdout_labelled)
    for key in ("subcat_1nn", "at_p10", "at_p10_in_subcat"):
        assert 0.0 <= evaluation[key] <= 1.0
    assert evaluation["classifier_accuracy"] == metrics["classifier"]["accuracy"]
    assert metrics["classifier"]["holdout_items"] == sum(1 for r in labelled if split[r["item_id"]] == "holdout")
    # The label audit leaves the disputed queries out of the title-consistent accuracy, and only them.
    classifier = metrics["classifier"]
    consistent = classifier["title_consistent"]
    assert consistent["holdout_items"] + len(consistent["disputed"]) == classifier["holdout_items"]
    assert evaluation["classifier_accuracy_title_consistent"] == consistent["accuracy"]

    curves = metrics["training_curves"]["lite0_finetuned"]
    # With the whole schedule (no early stopping) the validation items train too: no validation curve.
    assert len(curves["loss"]) == 1 and {"category_loss", "article_type_loss"} <= set(curves)
    assert "val_loss" not in curves
    learnt = [r for r in rows if r["category"] in manifest.classes and split[r["item_id"]] in ("train", "validation")]
    # Self-training: each round's teacher scored the same fixed sample of the unlabelled photos
    # (threshold 0 keeps them all); the first teacher trained on the labelled items alone, the
    # second is the first student. Each is measured on the same holdout as the bundle's classifier.
    self_training = metrics["self_training"]
    unlabelled = sum(1 for r in rows if not r["category"])
    assert unlabelled > PSEUDO_LABELLED
    assert (self_training["unlabelled"], self_training["threshold"], self_training["epochs"]) == (PSEUDO_LABELLED, 0.0, 1)
    rounds = self_training["rounds"]
    assert [(r["pseudo_labelled"], r["teacher_items"]) for r in rounds] == [
        (PSEUDO_LABELLED, len(learnt)), (PSEUDO_LABELLED, len(learnt) + PSEUDO_LABELLED)
    ]
    assert metrics["trained_items"] == len(learnt) + PSEUDO_LABELLED
    # The bundle records the settings it was trained with (the run's whole model and train sections).
    assert metrics["settings"] == {"model": config["model"], "train": config["train"]}
    for record in rounds:
        assert 0.0 <= record["teacher_accuracy"] <= 1.0
        assert len(record["teacher_curves"]["loss"]) == 1
    # The fine-tuned classifier learns every category with train.finetune_min_class_count training items.
    train_categories = [r["category"] for r in rows if r["category"] and split[r["item_id"]] == "train"]
    minimum = int(config["train"]["finetune_min_class_count"])
    assert manifest.classes == sorted({c for c in train_categories if train_categories.count(c) >= minimum})
    train_types = [r["article_type"] for r in labelled if split[r["item_id"]] == "train"]
    assert metrics["article_types"] == sorted({t for t in train_types if train_types.count(t) >= 3})


def test_an_unknown_embedding_is_refused_before_any_work(spark, make_config):
    config = make_config("model.embedding=lite1")
    with pytest.raises(ValueError, match="model.embedding must be one of autoencoder, .*lite0_finetuned"):
        train_models(spark, config)


def test_an_unknown_class_weighting_is_refused_before_any_work(spark, make_config):
    config = make_config("model.embedding=lite0_finetuned", "train.finetune_class_weights=balanced")
    with pytest.raises(ValueError, match="train.finetune_class_weights must be one of inverse, none, not 'balanced'"):
        train_models(spark, config)


def test_early_stopping_without_held_out_validation_is_refused_before_any_work(spark, make_config):
    config = make_config("model.embedding=lite0_finetuned", "train.finetune_early_stopping_patience=2")
    with pytest.raises(ValueError, match="needs held-out validation items"):
        train_models(spark, config)


def test_a_stored_version_measured_again_gives_its_recorded_classifier_figures(spark, finetuned):
    """``jobs/labels.py --evaluate``'s measurement reproduces the train job's, per class and with the audit."""
    config, manifest, metrics, _ = finetuned
    again = reevaluate_classifier(spark, config, manifest.version)
    assert again["holdout_items"] == metrics["classifier"]["holdout_items"]
    assert again["accuracy"] == pytest.approx(metrics["classifier"]["accuracy"])
    assert again["confusion_matrix"] == metrics["classifier"]["confusion_matrix"]
    assert again["title_consistent"] == metrics["classifier"]["title_consistent"]
    assert again["disputed_labels"] == metrics["classifier"]["disputed_labels"] == 1


def test_the_audit_disputes_the_flip_flops_titled_shirts(spark, finetuned):
    """Of the subset's labels, the audit disputes one: item 10804, labelled Flip Flops, titled "... Solid White Shirts"."""
    config, _, metrics, _ = finetuned
    disputed = disputed_labels(spark, config).select("item_id", "category", "title", "title_categories", "title_words")
    expected = spark.createDataFrame(
        [("10804", "Flip Flops", "Wrangler Men Rider Solid White Shirts", ["Topwear"], ["shirt"])],
        "item_id string, category string, title string, title_categories array<string>, title_words array<string>",
    )
    assertDataFrameEqual(disputed, expected)
    holdout = split_of("10804", holdout_fraction=float(config["model"]["holdout_fraction"]),
                       validation_fraction=float(config["model"]["validation_fraction"])) == "holdout"
    assert metrics["classifier"]["title_consistent"]["disputed"] == (["10804"] if holdout else [])


def test_the_evaluation_command_reproduces_the_recorded_evaluation(finetuned, photo_subset: Path, tmp_path: Path):
    """benchmarks/embedding_options.py scores the bundle from its files alone and gets the figures
    the train job recorded; a bundle trained on another split is refused."""
    config, manifest, metrics, _ = finetuned
    command = load_benchmark("embedding_options")
    folder = Path(config["storage"]["root"]) / "models" / manifest.version
    items = command.load_items(photo_subset)
    embedded = command.embed_bundle(items, folder, batch_size=16)
    measured = command.retrieval_metrics(embedded.vectors, items)
    recorded = metrics["evaluation"]
    for key in ("subcat_1nn", "at_p10", "at_p10_in_subcat"):
        assert measured[key] == pytest.approx(recorded[key], abs=1e-9), key
    assert measured["queries"] == recorded["queries"]
    assert embedded.classifier_accuracy == pytest.approx(metrics["classifier"]["accuracy"])

    other = tmp_path / manifest.version
    shutil.copytree(folder, other)
    changed = {**metrics, "split": {**metrics["split"], "holdout_fraction": 0.15}}
    (other / "metrics.json").write_text(json.dumps(changed), encoding="utf-8")
    with pytest.raises(SystemExit, match="not trained with this holdout"):
        command.embed_bundle(items, other, batch_size=16)


def test_the_same_catalog_config_and_seed_train_the_same_network(spark, finetuned, photo_subset: Path, tmp_path: Path):
    """A second run in a new store (its own Delta tables and Petastorm files) trains teacher, two
    students and the bundle's network to the same weights, bit for bit (``train.reproducible``)."""
    config, manifest, metrics, _ = finetuned
    assert config["train"]["reproducible"] is True
    config_again, manifest_again, metrics_again, _ = _ingest_and_train(spark, photo_subset, tmp_path)

    first = load_scorer_from_bytes(read_scorer_bytes(spark, config, manifest))
    again = load_scorer_from_bytes(read_scorer_bytes(spark, config_again, manifest_again))
    assert len(first.get_weights()) > 100
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), again.get_weights()))
    assert metrics_again["training_curves"] == metrics["training_curves"]
    assert metrics_again["self_training"] == metrics["self_training"]
    assert metrics_again["classifier"] == metrics["classifier"]
    assert manifest_again.version != manifest.version
    # What jobs/models.py --compare reports for them, and for a version trained otherwise.
    assert compare_bundles(first, metrics, again, metrics_again) == {
        "weight_arrays": len(first.get_weights()), "differing_arrays": 0, "weights_equal": True, "differing_metrics": [],
    }
    (tmp_path / "other").mkdir()
    config_other, manifest_other, metrics_other, _ = _ingest_and_train(spark, photo_subset, tmp_path / "other", "model.seed=8")
    other = load_scorer_from_bytes(read_scorer_bytes(spark, config_other, manifest_other))
    differences = compare_bundles(first, metrics, other, metrics_other)
    assert not differences["weights_equal"]
    # The frozen stem and early blocks keep their ImageNet weights in both; the trained layers differ.
    assert 0 < differences["differing_arrays"] < differences["weight_arrays"]
    assert {"settings", "training_curves"} <= set(differences["differing_metrics"])
