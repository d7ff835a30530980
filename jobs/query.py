"""Print the top-k look-alikes of an item id, or of a new photo, optionally under a maximum price.

    ./spark-submit.sh jobs/query.py --item-id 15970 --k 10
    ./spark-submit.sh jobs/query.py --image new-photo.jpg --max-price 1500
"""

from __future__ import annotations

from pathlib import Path

from lookalike.cli import job_parser, start_job
from lookalike.query import lookalikes_of_image, lookalikes_of_item


def main() -> None:
    parser = job_parser(__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--item-id")
    target.add_argument("--image", help="a photo file on the driver's file system")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-price", type=float, default=None)
    args = parser.parse_args()
    spark, config, _ = start_job("query", args)
    if args.item_id is not None:
        result = lookalikes_of_item(spark, config, args.item_id, k=args.k, max_price=args.max_price)
        print(f"look-alikes of item {args.item_id}" + (f" at or under {args.max_price:g}" if args.max_price else ""))
    else:
        category, confidence, result = lookalikes_of_image(
            spark, config, Path(args.image).read_bytes(), k=args.k, max_price=args.max_price
        )
        print(f"look-alikes of {args.image}: predicted category {category} ({confidence:.0%})")
    result.show(args.k, truncate=60)
    spark.stop()


if __name__ == "__main__":
    main()
