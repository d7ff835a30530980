"""scripts/list_change_causes.py: each changed item gets the kind of change a catalog diff shows."""

from __future__ import annotations

from benchmark_module import load_benchmark


def row(item_id: str, **changes: str) -> dict:
    base = {"item_id": item_id, "image_uri": f"images/{item_id}.jpg", "price": "10.00", "category": "Bags",
            "brand": "Ace", "in_stock": "true", "title": "A bag"}
    return {**base, **changes}


def test_change_kinds_follow_the_catalog_diff_with_category_first():
    causes = load_benchmark("list_change_causes", folder="scripts")
    night1 = [row("same"), row("gone"), row("moved"), row("photo"), row("price"), row("stock"), row("brand"),
              row("title"), row("both")]
    night2 = [row("same"), row("moved", category="Shoes"), row("photo", image_uri="images/other.jpg"),
              row("price", price="12.00"), row("stock", in_stock="false"), row("brand", brand="Bee"),
              row("title", title="A red bag"), row("both", category="Shoes", price="1.00"), row("fresh")]
    assert causes.change_kinds(night1, night2) == {
        "gone": "deleted", "fresh": "new", "moved": "category", "photo": "photo", "price": "price", "stock": "stock",
        "brand": "brand", "title": "other", "both": "category",
    }
