"""``user_recommendations``: new items for each user, from the look-alikes of the items they liked most."""

from pyspark.sql.types import DoubleType, IntegerType, LongType, StringType

from schemas._table import Column, TableSchema

USER_RECOMMENDATIONS = TableSchema(
    name="user_recommendations",
    comment=(
        "Top-N new items per user: look-alikes (published similar_items) of the items the user liked most, "
        "the user's favourite categories first, items the user has already interacted with excluded. "
        "Replaced whole by each recommendation run."
    ),
    columns=(
        Column("user_id", StringType(), "User id.", nullable=False),
        Column("rank", IntegerType(), "1 = recommended first.", nullable=False),
        Column("item_id", StringType(), "Recommended item; never one the user has interacted with.", nullable=False),
        Column("category", StringType(), "Its category.", nullable=False),
        Column("price", DoubleType(), "Its price.", nullable=False),
        Column("category_affinity", DoubleType(),
               "The user's liking of the category: sum of the weights of their liked items in it.", nullable=False),
        Column("score", DoubleType(),
               "Sum over the liked items listing it of like weight x cosine similarity.", nullable=False),
        Column("because_of", StringType(), "The liked item whose list contributed most.", nullable=False),
        Column("model_version", StringType(), "Model bundle the lists came from.", nullable=False),
        Column("run_id", StringType(), "Published run whose lists were used.", nullable=False),
        Column("interactions_version", LongType(), "Version of the interactions table used.", nullable=False),
    ),
    constraints={"rank_is_positive": "rank >= 1", "score_is_positive": "score > 0"},
)
