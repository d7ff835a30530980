"""A self-contained HTML report on a published run, for people rather than programs.

One HTML file with every photo and plot embedded as a ``data:`` URI, so it can be mailed or
opened from any store without the tables: the run's figures, sample items with their look-alike
grids, a t-SNE map of the embeddings, the classifier's confusion matrix and training curves, list
quality per category, cluster silhouettes and the quarantine counts. Every table is read at the
versions one publication names, so the report shows one whole run.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from delta.tables import DeltaTable
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lookalike import hadoop_fs
from lookalike.model_store import load_metrics
from lookalike.publish import Publication, published_table, require_publication
from lookalike.tables import read_table, storage_root, table_path
from schemas import (
    CATALOG,
    CLUSTER_SILHOUETTES,
    EMBEDDINGS,
    IMAGES,
    LIST_QUALITY,
    PUBLICATIONS,
    QUARANTINE,
    SIMILAR_ITEMS,
    TableSchema,
)

log = logging.getLogger(__name__)

# Used where the configuration has no [report] section (or leaves a key out).
DEFAULT_SETTINGS = {"sample_items": 8, "grid_k": 6, "tsne_items": 1500}
THUMBNAIL_PX = 96
THUMBNAIL_QUALITY = 80
PLOT_DPI = 100
# The ids of the plot images, for readers (and tests) that look for them.
PLOT_IDS = ("tsne-map", "confusion-matrix", "training-curves", "quality-chart")


@dataclass(frozen=True)
class ItemView:
    """What the report shows of one item: its photo (a ``data:`` URI, None when unreadable), title and price."""

    item_id: str
    title: str | None
    price: float | None
    thumbnail: str | None


def report_settings(config: Mapping[str, Any]) -> dict[str, int]:
    """``sample_items``, ``grid_k`` and ``tsne_items`` from the ``[report]`` section, defaults for what it leaves out."""
    section = config.get("report", {}) or {}
    return {name: int(section.get(name, default)) for name, default in DEFAULT_SETTINGS.items()}


def default_report_uri(config: Mapping[str, Any], run_id: str) -> str:
    """``<storage.root>/reports/<run_id>/index.html``."""
    return f"{storage_root(config)}/reports/{run_id}/index.html"


# --- HTML pieces -------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes; None as empty text."""
    return "" if value is None else html.escape(str(value), quote=True)


def data_uri(mime: str, content: bytes) -> str:
    """``content`` as a ``data:`` URI."""
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def thumbnail_uri(content: bytes, size: int = THUMBNAIL_PX) -> str | None:
    """A JPEG thumbnail (longest side ``size`` px) of a photo's bytes as a ``data:`` URI; None if Pillow cannot read it."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            small = image.convert("RGB")
            small.thumbnail((size, size))
            out = io.BytesIO()
            small.save(out, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    except (UnidentifiedImageError, OSError):
        return None
    return data_uri("image/jpeg", out.getvalue())


def render_item(item: ItemView, *, note: str = "") -> str:
    """An item's photo, title, price and an optional note (e.g. the score) as an HTML ``<figure>``.

    Every text is escaped; an item without a readable photo gets a placeholder instead of a broken image.
    """
    label = item.title or item.item_id
    photo = (
        f'<img class="thumb" src="{esc(item.thumbnail)}" alt="{esc(label)}">' if item.thumbnail
        else '<div class="thumb no-photo">no photo</div>'
    )
    price = "" if item.price is None else f'<span class="price">{item.price:,.2f}</span>'
    note_html = f'<span class="note">{esc(note)}</span>' if note else ""
    return (
        f'<figure class="item" data-item-id="{esc(item.item_id)}">{photo}'
        f'<figcaption><span class="title" title="{esc(label)}">{esc(label)}</span>{price}{note_html}</figcaption></figure>'
    )


@dataclass(frozen=True)
class Cell:
    """A table cell with attributes for its ``<td>`` (e.g. ``data-*`` for machine readers, ``class``)."""

    text: Any
    attributes: Mapping[str, Any] = field(default_factory=dict)


def _attributes(attributes: Mapping[str, Any]) -> str:
    return "".join(f' {name}="{esc(value)}"' for name, value in attributes.items() if value != "")


def render_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    row_attributes: Iterable[Mapping[str, Any]] | None = None,
    css_class: str = "",
) -> str:
    """An HTML table; every cell and attribute value is escaped.

    Parameters
    ----------
    columns : sequence of str
        Header texts.
    rows : iterable of sequence
        Cell values, or ``Cell`` for a cell with attributes.
    row_attributes : iterable of mapping, optional
        Per row, attributes for its ``<tr>``.
    """
    attributes = iter(row_attributes) if row_attributes is not None else None
    body = []
    for row in rows:
        cells = "".join(
            f"<td{_attributes(cell.attributes)}>{esc(cell.text)}</td>" if isinstance(cell, Cell) else f"<td>{esc(cell)}</td>"
            for cell in row
        )
        body.append(f"<tr{_attributes(next(attributes)) if attributes else ''}>{cells}</tr>")
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    return f'<table class="{esc(css_class)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _plot(figure: Figure, *, element_id: str, alt: str) -> str:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    return f'<img class="plot" id="{esc(element_id)}" alt="{esc(alt)}" src="{data_uri("image/png", out.getvalue())}">'


def _plain(text: Any) -> str:
    """Text from the data for a plot label: matplotlib would read ``$...$`` as a formula."""
    return str(text).replace("$", r"\$")


def _section(element_id: str, title: str, content: str) -> str:
    return f'<section id="{esc(element_id)}"><h2>{esc(title)}</h2>{content}</section>'


def _note(text: str) -> str:
    return f'<p class="empty">{esc(text)}</p>'


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


# --- reading -----------------------------------------------------------------------------------


def _table_if_present(spark: SparkSession, config: Mapping[str, Any], table: TableSchema) -> DataFrame | None:
    """The table, or None in a store made before it existed (the report reads, it creates nothing)."""
    path = table_path(config, table)
    return read_table(spark, config, table) if DeltaTable.isDeltaTable(spark, path) else None


def _sample_items(embeddings: DataFrame, lists: DataFrame, count: int) -> list[tuple[str, str]]:
    """(item_id, category) of up to ``count`` items with a list: one per category first, then a second, ...

    Within a category items are taken in the order of the SHA-256 of their id: the same items in
    every report on the same data, spread over the id range rather than the first ids.
    """
    listed = lists.select("item_id").distinct()
    in_category = Window.partitionBy("category").orderBy(F.sha2("item_id", 256), "item_id")
    picked = (
        embeddings.select("item_id", "category").join(listed, "item_id")
        .withColumn("pick", F.row_number().over(in_category))
        .orderBy("pick", "category")
        .limit(count)
        .collect()
    )
    return [(r["item_id"], r["category"]) for r in picked]


def _item_views(
    spark: SparkSession, config: Mapping[str, Any], catalog: DataFrame, item_ids: Sequence[str]
) -> dict[str, ItemView]:
    """Title, price and photo thumbnail of the given items, from the published catalog and ``images``."""
    if not item_ids:
        return {}
    rows = catalog.where(F.col("item_id").isin(list(item_ids))).select("item_id", "title", "price", "image_hash").collect()
    hashes = sorted({r["image_hash"] for r in rows})
    # Filtered on the hash first, so Delta can skip the files that hold none of them.
    photos = read_table(spark, config, IMAGES).where(F.col("image_hash").isin(hashes)).select("image_hash", "content")
    thumbnails = {r["image_hash"]: thumbnail_uri(bytes(r["content"])) for r in photos.collect()}
    return {r["item_id"]: ItemView(r["item_id"], r["title"], r["price"], thumbnails.get(r["image_hash"])) for r in rows}


# --- sections ----------------------------------------------------------------------------------


def _header(
    spark: SparkSession, config: Mapping[str, Any], publication: Publication, embeddings: DataFrame,
    lists: DataFrame, quarantine: DataFrame | None,
) -> str:
    published = (
        read_table(spark, config, PUBLICATIONS).where(F.col("run_seq") == publication.run_seq)
        .select("published_at").limit(1).collect()
    )
    quarantined = quarantine.count() if quarantine is not None else 0
    quarantined_by_run = quarantine.where(F.col("run_id") == publication.run_id).count() if quarantine is not None else 0
    facts = [
        ("run-id", "Run", publication.run_id),
        ("run-seq", "Run sequence", publication.run_seq),
        ("kind", "Kind", publication.kind),
        ("model-version", "Model version", publication.model_version or "none"),
        ("published-at", "Published at (UTC)", f"{published[0]['published_at']:%Y-%m-%d %H:%M:%S}" if published else "unknown"),
        ("catalog-version", "Catalog version", publication.catalog_version),
        ("items-embedded", "Items embedded", embeddings.count()),
        ("lists", "Look-alike lists", lists.select("item_id").distinct().count()),
        ("quarantined", "Rows quarantined (all runs)", quarantined),
        ("quarantined-by-run", "Rows quarantined by this run", quarantined_by_run),
    ]
    terms = "".join(f'<dt>{esc(label)}</dt><dd id="{esc(key)}">{esc(value)}</dd>' for key, label, value in facts)
    return f'<header id="summary"><h1>Look-alike report: run {esc(publication.run_id)}</h1><dl>{terms}</dl></header>'


def _samples(
    spark: SparkSession, config: Mapping[str, Any], catalog: DataFrame, embeddings: DataFrame, lists: DataFrame,
    *, sample_items: int, grid_k: int,
) -> str:
    samples = _sample_items(embeddings, lists, sample_items)
    if not samples:
        return _section("samples", "Sample items and their look-alikes", _note("No published look-alike lists."))
    sample_ids = [item_id for item_id, _ in samples]
    neighbours: dict[str, list[Any]] = {item_id: [] for item_id in sample_ids}
    for row in (
        lists.where(F.col("item_id").isin(sample_ids) & (F.col("rank") <= grid_k))
        .select("item_id", "rank", "neighbour_id", "score", "neighbour_price").orderBy("item_id", "rank").collect()
    ):
        neighbours[row["item_id"]].append(row)
    shown_ids = {*sample_ids, *(n["neighbour_id"] for grid in neighbours.values() for n in grid)}
    views = _item_views(spark, config, catalog, sorted(shown_ids))
    blocks = []
    for item_id, category in samples:
        item = views.get(item_id, ItemView(item_id, None, None, None))
        grid = []
        for n in neighbours[item_id]:
            shown = views.get(n["neighbour_id"], ItemView(n["neighbour_id"], None, None, None))
            # The price the list was published with, which is what a shopper saw beside it.
            shown = ItemView(shown.item_id, shown.title, n["neighbour_price"], shown.thumbnail)
            rank = int(n["rank"])
            figure = render_item(shown, note=f"#{rank} · score {n['score']:.3f}")
            grid.append(f'<li class="neighbour" data-neighbour-id="{esc(n["neighbour_id"])}" data-rank="{rank}">{figure}</li>')
        blocks.append(
            f'<div class="sample" data-item-id="{esc(item_id)}" data-category="{esc(category)}">'
            f'<h3>{esc(category)}</h3><div class="row">{render_item(item, note=f"item {item_id}")}'
            f'<ol class="grid">{"".join(grid)}</ol></div></div>'
        )
    intro = (
        f"<p>{len(samples)} items, one per category first (by the SHA-256 of the item id), each with its top "
        f"{grid_k} look-alikes from <code>similar_items</code>.</p>"
    )
    return _section("samples", "Sample items and their look-alikes", intro + "".join(blocks))


def _tsne(embeddings: DataFrame, *, tsne_items: int) -> str:
    from sklearn.manifold import TSNE  # only the report needs scikit-learn

    title = "t-SNE map of the embeddings"
    rows = (
        embeddings.select("item_id", "category", "embedding")
        .orderBy(F.sha2("item_id", 256), "item_id").limit(tsne_items).collect()
    )
    if len(rows) < 5:
        return _section("tsne", title, _note(f"Too few embeddings for a map ({len(rows)})."))
    vectors = np.array([r["embedding"] for r in rows], dtype=np.float32)
    categories = np.array([r["category"] for r in rows])
    # Perplexity must stay below the number of points; 30 is the usual value for larger samples.
    perplexity = min(30.0, (len(rows) - 1) / 3)
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=0).fit_transform(vectors)
    figure = Figure(figsize=(9, 6.5))
    axes = figure.subplots()
    palette = colormaps["tab20"]
    for index, category in enumerate(sorted(set(categories))):
        at = categories == category
        axes.scatter(points[at, 0], points[at, 1], s=10, color=palette(index % 20), marker="os^D"[index // 20 % 4],
                     label=f"{_plain(category)} ({int(at.sum())})")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(f"{len(rows)} items, perplexity {perplexity:.0f}")
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=1.5, frameon=False)
    plot = _plot(figure, element_id="tsne-map", alt=f"t-SNE map of {len(rows)} embeddings coloured by category")
    return _section("tsne", title, plot)


def _confusion_plot(confusion: Mapping[str, Any]) -> str:
    labels = [_plain(label) for label in confusion["labels"]]
    counts = np.array(confusion["rows_true_columns_predicted"], dtype=float)
    side = max(5.0, 0.45 * len(labels) + 2.5)
    figure = Figure(figsize=(side, side))
    axes = figure.subplots()
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = counts.max() / 2 if counts.size else 0
    for (true, predicted), count in np.ndenumerate(counts):
        if count:
            axes.text(predicted, true, f"{count:.0f}", ha="center", va="center", fontsize=7,
                      color="white" if count > threshold else "black")
    return _plot(figure, element_id="confusion-matrix", alt="confusion matrix of the classifier on the holdout items")


def _curves_plot(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> str | None:
    """One panel per model and measure (loss, accuracy, ...), training and validation together."""
    panels = []
    for model, series in sorted(curves.items()):
        for measure in sorted({name.removeprefix("val_") for name in series}, key=lambda m: (m != "loss", m)):
            names = {"training": measure, "validation": f"val_{measure}"}
            lines = {label: series[name] for label, name in names.items() if series.get(name)}
            if lines:
                panels.append((model, measure, lines))
    if not panels:
        return None
    figure = Figure(figsize=(3.6 * len(panels), 3.0))
    for axes, (model, measure, lines) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        for label, values in lines.items():
            axes.plot(range(1, len(values) + 1), values, marker=".", label=label)
        axes.set_title(_plain(f"{model}: {measure}"), fontsize=10)
        axes.set_xlabel("epoch")
        axes.legend(fontsize=8)
    return _plot(figure, element_id="training-curves", alt="training curves (loss and accuracy per epoch)")


def _classifier(spark: SparkSession, config: Mapping[str, Any], model_version: str | None) -> str:
    title = "Model: classifier and training"
    if not model_version:
        return _section("model", title, _note("The publication names no model."))
    try:
        metrics = load_metrics(spark, config, model_version)
    except FileNotFoundError:
        return _section("model", title, _note(f"No metrics found for model {model_version}."))
    parts = [f"<p>Model <code>{esc(model_version)}</code>, classes: {esc(', '.join(metrics.get('classes', [])))}.</p>"]
    classifier = metrics.get("classifier") or {}
    if "accuracy" in classifier:
        splits = ", ".join(f"{name} {count}" for name, count in sorted((metrics.get("items_per_split") or {}).items()))
        parts.append(f'<p>Holdout accuracy <strong id="holdout-accuracy">{classifier["accuracy"]:.1%}</strong> '
                     f"(items per split: {esc(splits)}).</p>")
        undisputed = (classifier.get("title_consistent") or {}).get("accuracy")
        if undisputed is not None:
            parts.append(f'<p>Over the holdout items whose own title does not dispute their label: '
                         f'<strong id="undisputed-accuracy">{undisputed:.1%}</strong> '
                         f'({classifier["disputed_labels"]} labels of the catalog disputed, '
                         f'{len(classifier["title_consistent"]["disputed"])} of them held out; '
                         f"<code>jobs/labels.py</code> lists them).</p>")
    per_class = classifier.get("per_class") or {}
    if per_class:
        parts.append(render_table(
            ["class", "holdout items", "accuracy"],
            [(name, c["items"], f"{c['accuracy']:.1%}") for name, c in sorted(per_class.items())],
            css_class="numbers",
        ))
    plots = []
    if classifier.get("confusion_matrix"):
        plots.append(_confusion_plot(classifier["confusion_matrix"]))
    curves = _curves_plot(metrics.get("training_curves") or {})
    if curves:
        plots.append(curves)
    if plots:
        parts.append(f'<div class="plots">{"".join(plots)}</div>')
    else:
        parts.append(_note("No confusion matrix or training curves in the metrics."))
    return _section("model", title, "".join(parts))


def _quality_plot(per_category: Sequence[Any]) -> str:
    names = [_plain(r["category"]) for r in per_category]
    rows = np.arange(len(names))
    figure = Figure(figsize=(8, 0.45 * len(names) + 1.5))
    axes = figure.subplots()
    axes.barh(rows - 0.2, [r["precision"] for r in per_category], height=0.4, label="precision@k of the lists")
    axes.barh(rows + 0.2, [r["random"] or 0.0 for r in per_category], height=0.4, label="random list from the partition")
    axes.set_yticks(rows, names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("articleType precision (weighted by items evaluated)")
    # Above the axes: inside, it would hide the longest bars.
    axes.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, frameon=False)
    return _plot(figure, element_id="quality-chart", alt="precision of the lists against a random baseline per category")


def _quality(quality: DataFrame | None, run_id: str) -> str:
    title = "List quality per category and price band"
    rows = (
        quality.where(F.col("run_id") == run_id).orderBy("category", "price_band").collect() if quality is not None else []
    )
    if not rows:
        return _section("quality", title, _note(f"No list quality measured for run {run_id}."))
    evaluated = F.col("items_evaluated")
    per_category = (
        quality.where((F.col("run_id") == run_id) & (evaluated > 0)).groupBy("category")
        .agg(
            (F.sum(F.col("precision_at_k") * evaluated) / F.sum(evaluated)).alias("precision"),
            (F.sum(F.col("random_list_precision") * evaluated)
             / F.sum(F.when(F.col("random_list_precision").isNotNull(), evaluated))).alias("random"),
        )
        .orderBy("category").collect()
    )
    table = render_table(
        ["category", "price band", "k", "items evaluated", "precision@k", "strict precision@k", "random list"],
        [(r["category"], r["price_band"], r["k"], r["items_evaluated"], _number(r["precision_at_k"]),
          _number(r["strict_precision_at_k"]), _number(r["random_list_precision"])) for r in rows],
        row_attributes=[{"data-category": r["category"], "data-price-band": r["price_band"]} for r in rows],
        css_class="numbers",
    )
    chart = _quality_plot(per_category) if per_category else ""
    return _section("quality", title, f'<div class="plots">{chart}</div>{table}')


def _clusters(silhouettes: DataFrame | None, run_id: str) -> str:
    title = "Cluster silhouettes per category"
    if silhouettes is None:
        return _section("clusters", title, _note("No clustering run yet (no cluster_silhouettes table)."))
    # A clustering rerun on the same published run appends again: keep the latest figure per (category, k).
    latest = Window.partitionBy("category", "k").orderBy(F.col("measured_at").desc())
    rows = (
        silhouettes.where(F.col("run_id") == run_id).withColumn("newest", F.row_number().over(latest))
        .where("newest = 1").orderBy("category", "k").collect()
    )
    if not rows:
        return _section("clusters", title, _note(f"No clustering run yet for run {run_id}."))
    ks = sorted({int(r["k"]) for r in rows})
    tried: dict[str, dict[int, Any]] = {}
    for r in rows:
        tried.setdefault(r["category"], {})[int(r["k"])] = r
    table_rows = []
    for category, by_k in sorted(tried.items()):
        chosen = [k for k, r in sorted(by_k.items()) if r["chosen"]]
        cells: list[Any] = [category, max(r["items"] for r in by_k.values()), ", ".join(map(str, chosen)) or "none"]
        for k in ks:
            r = by_k.get(k)
            cells.append("" if r is None else Cell(
                ("✔ " if r["chosen"] else "") + _number(r["silhouette"]),
                {"data-k": k, "data-chosen": "true" if r["chosen"] else "false", "class": "chosen" if r["chosen"] else ""},
            ))
        table_rows.append(cells)
    table = render_table(
        ["category", "items", "chosen k", *(f"k = {k}" for k in ks)],
        table_rows,
        row_attributes=[{"data-category": category} for category in sorted(tried)],
        css_class="numbers",
    )
    intro = "<p>Mean silhouette (cosine) of every k tried by KMeans; ✔ marks the k chosen, the best.</p>"
    return _section("clusters", title, intro + table)


def _quarantine(quarantine: DataFrame | None) -> str:
    title = "Quarantined rows by stage and reason (all runs)"
    rows = quarantine.groupBy("stage", "reason").count().orderBy("stage", "reason").collect() if quarantine is not None else []
    if not rows:
        return _section("quarantine", title, _note("Nothing quarantined."))
    table = render_table(
        ["stage", "reason", "rows"],
        [(r["stage"], r["reason"], r["count"]) for r in rows],
        row_attributes=[{"data-stage": r["stage"], "data-reason": r["reason"], "data-count": r["count"]} for r in rows],
        css_class="numbers",
    )
    return _section("quarantine", title, table)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1em; margin: 12px 0 4px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dt { color: #666; } dd { margin: 0; font-weight: 600; }
nav a { margin-right: 12px; }
.row { display: flex; gap: 16px; align-items: flex-start; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; list-style: none; margin: 0; padding: 0 0 0 16px; border-left: 3px solid #ddd; }
figure.item { margin: 0; width: 112px; font-size: 11px; }
.thumb { width: 96px; height: 96px; object-fit: contain; background: #f4f4f4; display: block; }
.no-photo { display: flex; align-items: center; justify-content: center; color: #999; }
figcaption span { display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.price { font-weight: 600; } .note { color: #666; }
.plots { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.plot { max-width: 100%; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f4f4f4; }
table.numbers td { text-align: right; } table.numbers td:first-child { text-align: left; }
td.chosen { background: #e8f5e9; font-weight: 600; }
.empty { color: #666; font-style: italic; }
footer { margin-top: 3em; color: #666; font-size: 12px; }
"""


def build_report(spark: SparkSession, config: Mapping[str, Any], *, publication: Publication | None = None) -> str:
    """The HTML report on a published run, self-contained (photos and plots as ``data:`` URIs).

    Parameters
    ----------
    spark : SparkSession
    config : mapping
        The job configuration; ``[report]`` ``sample_items``, ``grid_k`` and ``tsne_items`` are
        read with defaults (8, 6, 1500).
    publication : Publication, optional
        The run to report on (default: the latest publication). Every published table is read at
        the version it names.

    Returns
    -------
    str
        The HTML text. ``<body data-image-count>`` says how many ``<img>`` elements it holds.

    Raises
    ------
    RuntimeError
        If nothing has been published yet.
    """
    publication = require_publication(spark, config, publication)
    settings = report_settings(config)
    catalog = published_table(spark, config, CATALOG, publication)
    embeddings = published_table(spark, config, EMBEDDINGS, publication)
    lists = published_table(spark, config, SIMILAR_ITEMS, publication)
    quarantine = _table_if_present(spark, config, QUARANTINE)
    run = publication.run_id
    log.info("report on run %s (seq %d): header", run, publication.run_seq)
    header = _header(spark, config, publication, embeddings, lists, quarantine)
    log.info("report on run %s: %d sample items with %d look-alikes each", run, settings["sample_items"], settings["grid_k"])
    sections = [_samples(spark, config, catalog, embeddings, lists,
                         sample_items=settings["sample_items"], grid_k=settings["grid_k"])]
    log.info("report on run %s: t-SNE map of up to %d embeddings", run, settings["tsne_items"])
    sections.append(_tsne(embeddings, tsne_items=settings["tsne_items"]))
    log.info("report on run %s: classifier metrics of model %s", run, publication.model_version)
    sections.append(_classifier(spark, config, publication.model_version))
    log.info("report on run %s: list quality", run)
    sections.append(_quality(_table_if_present(spark, config, LIST_QUALITY), run))
    log.info("report on run %s: cluster silhouettes", run)
    sections.append(_clusters(_table_if_present(spark, config, CLUSTER_SILHOUETTES), run))
    log.info("report on run %s: quarantine", run)
    sections.append(_quarantine(quarantine))
    body = header + "".join(sections)
    # Every text from the data is escaped, so each "<img " is one of ours.
    images = body.count("<img ")
    nav = "".join(
        f'<a href="#{key}">{label}</a>' for key, label in (
            ("samples", "Samples"), ("tsne", "t-SNE map"), ("model", "Model"), ("quality", "Quality"),
            ("clusters", "Clusters"), ("quarantine", "Quarantine"),
        )
    )
    log.info("report on run %s: %d images", run, images)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Look-alike report: run {esc(run)}</title><style>{_STYLE}</style></head>"
        f'<body data-run-id="{esc(run)}" data-image-count="{images}"><nav>{nav}</nav>{body}'
        f"<footer>{images} images embedded. Photos, plots and tables of run {esc(run)} "
        f"(publication {publication.run_seq}).</footer></body></html>\n"
    )


def write_report(
    spark: SparkSession,
    config: Mapping[str, Any],
    *,
    output_uri: str | None = None,
    publication: Publication | None = None,
) -> str:
    """Build the report on a published run and write it atomically to any Hadoop path.

    Parameters
    ----------
    output_uri : str, optional
        Where to write the HTML (default: ``<storage.root>/reports/<run_id>/index.html``).
    publication : Publication, optional
        The run to report on (default: the latest publication).

    Returns
    -------
    str
        The URI written.

    Raises
    ------
    RuntimeError
        If nothing has been published yet.
    """
    # Resolved once, so that the default path and the content name the same run.
    publication = require_publication(spark, config, publication)
    content = build_report(spark, config, publication=publication)
    uri = output_uri or default_report_uri(config, publication.run_id)
    hadoop_fs.write_bytes_atomically(spark, uri, content.encode("utf-8"))
    log.info("report on run %s written to %s (%d bytes)", publication.run_id, uri, len(content.encode("utf-8")))
    return uri


__all__ = [
    "Cell", "DEFAULT_SETTINGS", "ItemView", "PLOT_IDS", "build_report", "default_report_uri", "render_item", "render_table",
    "report_settings", "thumbnail_uri", "write_report",
]
