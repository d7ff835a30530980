"""The HTML report on a published run, read back two ways.

The report on the session's refresh history (real photos, a real model, real Delta tables) is
opened in headless Chromium: no broken images, as many as the report says, every plot present,
a screenshot that is not blank. Without the browser, its content is checked against the tables:
the sample grids are the published lists, the quarantine counts a groupBy of the quarantine
table, and text from the data is escaped. A copy of the store checks a store without clustering
and one with a title and a category that hold HTML.
"""

from __future__ import annotations

import dataclasses
import html
import shutil
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from PIL import Image
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lookalike.model_store import load_metrics
from lookalike.publish import latest_publication, published_table
from lookalike.report import (
    DEFAULT_SETTINGS,
    PLOT_IDS,
    ItemView,
    build_report,
    default_report_uri,
    render_item,
    render_table,
    report_settings,
    write_report,
)
from lookalike.tables import append_quarantine, ensure_table, read_table, storage_root, table_path, table_version
from schemas import CATALOG, CLUSTER_SILHOUETTES, EMBEDDINGS, QUARANTINE, SIMILAR_ITEMS

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Far above the test store's report (a few hundred kB): thumbnails, not photos, are embedded.
MAX_REPORT_BYTES = 3_000_000
EVIL = '<script>alert("x")</script> & <b>bold</b>'


class ReportContent(HTMLParser):
    """What the tests read back from a report's HTML: grids, table rows, images, header facts, section texts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.samples: dict[str, list[tuple[int, str]]] = {}  # item_id -> [(rank, neighbour_id)], in page order
        self.sample_categories: dict[str, str] = {}
        self.quarantine: list[tuple[str, str, int]] = []
        self.silhouettes: list[tuple[str, int, bool]] = []
        self.images: list[dict[str, str]] = []
        self.facts: dict[str, str] = {}
        self.section_text: dict[str, str] = {}
        self._section: str | None = None
        self._sample: str | None = None
        self._category: str | None = None
        self._fact: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        classes = a.get("class", "").split()
        if tag == "body":
            self.body = a
        elif tag == "section":
            self._section = a["id"]
        elif tag == "div" and "sample" in classes:
            self._sample = a["data-item-id"]
            self.samples[self._sample] = []
            self.sample_categories[self._sample] = a["data-category"]
        elif tag == "li" and "neighbour" in classes:
            self.samples[self._sample].append((int(a["data-rank"]), a["data-neighbour-id"]))
        elif tag == "tr" and self._section == "quarantine" and "data-stage" in a:
            self.quarantine.append((a["data-stage"], a["data-reason"], int(a["data-count"])))
        elif tag == "tr" and self._section == "clusters" and "data-category" in a:
            self._category = a["data-category"]
        elif tag == "td" and self._section == "clusters" and "data-k" in a:
            self.silhouettes.append((self._category, int(a["data-k"]), a["data-chosen"] == "true"))
        elif tag == "img":
            self.images.append(a)
        elif tag == "dd":
            self._fact = a.get("id")

    def handle_endtag(self, tag: str) -> None:
        if tag == "dd":
            self._fact = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._fact:
            self.facts[self._fact] = self.facts.get(self._fact, "") + data
        if self._section:
            self.section_text[self._section] = self.section_text.get(self._section, "") + data


@pytest.fixture(scope="module")
def report_path(spark, history) -> Path:
    return Path(write_report(spark, history.full))


@pytest.fixture(scope="module")
def report(report_path: Path) -> ReportContent:
    return ReportContent(report_path.read_text(encoding="utf-8"))


def _chrome():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run `bash scripts/setup_browser.sh` to install Debian's "
                    "chromium and chromium-driver", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    # Explicit paths, so Selenium Manager looks for (and downloads) nothing.
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _assert_not_blank(png: Path, *, min_colours: int, min_ink: float) -> None:
    with Image.open(png) as shot:
        rgb = shot.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 24)
    ink = sum(count for count, colour in colours if min(colour) < 235) / (rgb.width * rgb.height)
    assert len(colours) >= min_colours and ink >= min_ink, f"{png} looks blank: {len(colours)} colours, {ink:.1%} non-white"


def test_report_is_written_under_the_store_for_the_published_run(spark, history, report_path: Path, report: ReportContent):
    run_id = latest_publication(spark, history.full).run_id
    expected = f"{storage_root(history.full)}/reports/{run_id}/index.html"
    assert str(report_path) == default_report_uri(history.full, run_id) == expected
    assert 0 < report_path.stat().st_size < MAX_REPORT_BYTES
    assert report.body["data-run-id"] == report.facts["run-id"] == run_id


def test_report_renders_in_headless_chromium(spark, history, report_path: Path, report: ReportContent, tmp_path: Path):
    """Every image decodes, as many as the report declares and the tables imply, and the page is not blank."""
    grid_k = report_settings(history.full)["grid_k"]
    lists = published_table(spark, history.full, SIMILAR_ITEMS)
    shown_neighbours = lists.where(F.col("item_id").isin(list(report.samples)) & (F.col("rank") <= grid_k)).count()
    # A photo per sample item and per look-alike shown, and the four plots.
    expected_images = len(report.samples) + shown_neighbours + len(PLOT_IDS)

    from selenium.webdriver.support.ui import WebDriverWait

    driver = _chrome()
    try:
        driver.get(report_path.as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({id: i.id, alt: i.alt, width: i.naturalWidth, complete: i.complete}))"
        )
        broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0)]
        assert not broken, f"broken images: {broken}"
        declared = int(driver.execute_script("return document.body.dataset.imageCount"))
        assert len(images) == declared == expected_images
        plots = {i["id"]: i for i in images if i["id"] in PLOT_IDS}
        assert set(plots) == set(PLOT_IDS)
        assert all(p["width"] >= 300 and p["alt"] for p in plots.values())
        assert plots["tsne-map"]["alt"].startswith("t-SNE map of")

        viewport = tmp_path / "report-top.png"
        assert driver.save_screenshot(str(viewport))
        _assert_not_blank(viewport, min_colours=500, min_ink=0.05)
        tsne = tmp_path / "tsne-map.png"
        tsne.write_bytes(driver.find_element("id", "tsne-map").screenshot_as_png)
        _assert_not_blank(tsne, min_colours=50, min_ink=0.02)
        # The whole page in one picture, for a person to look at.
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(1400, min(height + 200, 16000))
        driver.save_screenshot(str(tmp_path / "report-full.png"))
    finally:
        driver.quit()


def test_model_section_gives_the_accuracy_over_all_and_over_undisputed_labels(spark, history, report: ReportContent):
    """Both holdout figures are the published model's recorded ones."""
    classifier = load_metrics(spark, history.full, latest_publication(spark, history.full).model_version)["classifier"]
    text = " ".join(report.section_text["model"].split())
    assert f"Holdout accuracy {classifier['accuracy']:.1%}" in text
    assert (f"does not dispute their label: {classifier['title_consistent']['accuracy']:.1%} "
            f"({classifier['disputed_labels']} labels of the catalog disputed, "
            f"{len(classifier['title_consistent']['disputed'])} of them held out") in text


def test_sample_grids_are_the_published_lists(spark, history, report: ReportContent):
    config = history.full
    settings = report_settings(config)
    lists = published_table(spark, config, SIMILAR_ITEMS)
    embeddings = published_table(spark, config, EMBEDDINGS)
    with_lists = embeddings.join(lists.select("item_id").distinct(), "item_id")
    sampled = list(report.samples)
    assert len(sampled) == len(set(sampled)) == min(settings["sample_items"], with_lists.count())
    # One item per category before a second from any category.
    categories = with_lists.select("category").distinct().count()
    assert len(set(report.sample_categories.values())) == min(len(sampled), categories)
    assert any(report.samples.values()), "no sample has look-alikes: the comparison below would prove nothing"

    shown = spark.createDataFrame(
        [(item_id, rank, neighbour) for item_id, grid in report.samples.items() for rank, neighbour in grid],
        "item_id string, rank int, neighbour_id string",
    )
    published = lists.where(F.col("item_id").isin(sampled) & (F.col("rank") <= settings["grid_k"])).select(
        "item_id", "rank", "neighbour_id"
    )
    assertDataFrameEqual(shown, published)
    # Each grid in rank order, as a shopper sees it.
    assert all([rank for rank, _ in grid] == sorted(rank for rank, _ in grid) for grid in report.samples.values())
    assert int(report.facts["items-embedded"]) == embeddings.count()
    assert int(report.facts["lists"]) == lists.select("item_id").distinct().count()


def test_quarantine_counts_are_the_quarantine_table(spark, history, report: ReportContent):
    quarantine = read_table(spark, history.full, QUARANTINE)
    shown = spark.createDataFrame(report.quarantine, "stage string, reason string, count long")
    assertDataFrameEqual(shown, quarantine.groupBy("stage", "reason").count())
    assert int(report.facts["quarantined"]) == quarantine.count()
    # The copied store below quarantines rows of its own, so a report with counts is checked there too.


def test_rendering_escapes_text_from_the_data():
    figure = render_item(ItemView(item_id='1"2', title=EVIL, price=12.5, thumbnail=None), note=EVIL)
    assert "<script>" not in figure and "<b>" not in figure
    assert html.escape(EVIL) in figure
    assert 'data-item-id="1&quot;2"' in figure
    assert "no-photo" in figure and "<img" not in figure  # a placeholder, never a broken image
    table = render_table(["a<b"], [[EVIL]], row_attributes=[{"data-category": EVIL}])
    assert "<script>" not in table and "a&lt;b" in table
    parsed = ReportContent(f'<section id="clusters">{table}</section>')
    assert parsed.section_text["clusters"] == "a<b" + EVIL  # escaped, and read back as the same text


def test_report_settings_default_per_key():
    assert report_settings({}) == DEFAULT_SETTINGS == {"sample_items": 8, "grid_k": 6, "tsne_items": 1500}
    assert report_settings({"report": {"grid_k": "3"}}) == {**DEFAULT_SETTINGS, "grid_k": 3}


def test_report_on_a_copied_store_without_clustering_then_with_html_in_the_data(
    spark, history, report: ReportContent, tmp_path: Path
):
    """No cluster_silhouettes table is no failure; then, with silhouettes, quarantined rows, and a title
    and a category holding HTML: the silhouettes and counts are the tables', the text shown escaped."""
    source = Path(storage_root(history.full))
    for folder in ("tables", "models"):
        shutil.copytree(source / folder, tmp_path / "store" / folder)
    shutil.rmtree(tmp_path / "store" / "tables" / CLUSTER_SILHOUETTES.name, ignore_errors=True)
    config = {
        **history.full,
        "storage": {**history.full["storage"], "root": str(tmp_path / "store")},
        "report": {"sample_items": 3, "grid_k": 2, "tsne_items": 40},
    }

    without_clusters = ReportContent(build_report(spark, config))
    assert "No clustering run yet" in without_clusters.section_text["clusters"]
    assert without_clusters.silhouettes == []
    # The same data gives the same sample, whatever its size: the first items of the larger report's.
    assert list(without_clusters.samples) == list(report.samples)[:3]
    assert all(len(grid) <= 2 for grid in without_clusters.samples.values())
    tsne = next(i for i in without_clusters.images if i.get("id") == "tsne-map")
    assert tsne["alt"] == "t-SNE map of 40 embeddings coloured by category"

    publication = latest_publication(spark, config)
    evil_item = next(iter(without_clusters.samples))
    DeltaTable.forPath(spark, table_path(config, CATALOG)).update(F.col("item_id") == evil_item, {"title": F.lit(EVIL)})
    now = datetime.now(timezone.utc)
    category = "Bags <&> \"quoted\""
    ensure_table(spark, config, CLUSTER_SILHOUETTES)
    rows = [
        # run, category, items, k, silhouette, chosen, measured_at
        (publication.run_id, category, 30, 2, 0.30, True, now - timedelta(hours=1)),  # an earlier clustering of the run
        (publication.run_id, category, 30, 2, 0.20, False, now),
        (publication.run_id, category, 30, 3, 0.40, True, now),
        ("another-run", category, 30, 4, 0.90, True, now),
    ]
    frame = spark.createDataFrame(
        [{"run_id": r, "model_version": "m", "category": c, "items": n, "k": k, "silhouette": s, "chosen": ch, "measured_at": t}
         for r, c, n, k, s, ch, t in rows],
        CLUSTER_SILHOUETTES.spark_schema,
    )
    frame.write.format("delta").mode("append").save(table_path(config, CLUSTER_SILHOUETTES))
    refused = spark.createDataFrame(
        [("1", "bad_price"), ("2", "bad_price"), (None, "missing_item_id")], "item_id string, reason string"
    ).select("item_id", "reason", F.lit("detail").alias("detail"), F.lit("{}").alias("source_record"))
    append_quarantine(config, refused, run_id=publication.run_id, stage="ingest")
    append_quarantine(config, refused.limit(1), run_id="another-run", stage="embed")
    # The catalog change is not published: report on the publication as if it named the new catalog version.
    unpublished_catalog = dataclasses.replace(publication, catalog_version=table_version(spark, config, CATALOG))
    text = build_report(spark, config, publication=unpublished_catalog)
    with_html = ReportContent(text)

    assert EVIL not in text and category not in text
    assert html.escape(EVIL) in text and html.escape(category) in text
    evil_photo = next(i for i in with_html.images if i.get("class") == "thumb" and i["alt"] == EVIL)
    assert evil_photo["src"].startswith("data:image/jpeg;base64,")
    # This run's k only, each with its latest figure.
    schema = "category string, k int, chosen boolean"
    assertDataFrameEqual(
        spark.createDataFrame(with_html.silhouettes, schema),
        spark.createDataFrame([(category, 2, False), (category, 3, True)], schema),
    )
    quarantine = read_table(spark, config, QUARANTINE)
    assertDataFrameEqual(
        spark.createDataFrame(with_html.quarantine, "stage string, reason string, count long"),
        quarantine.groupBy("stage", "reason").count(),
    )
    assert len(with_html.quarantine) >= 3  # the rows appended above: two stages, two reasons
    assert int(with_html.facts["quarantined"]) == quarantine.count()
    assert int(with_html.facts["quarantined-by-run"]) == quarantine.where(F.col("run_id") == publication.run_id).count()
    assert "✔ 0.400" in with_html.section_text["clusters"] and "✔ 0.300" not in with_html.section_text["clusters"]
