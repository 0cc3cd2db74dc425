"""The lake's tables as Spark DataFrames, for when one machine is not enough.

The embedded default reads the lake with DuckDB. The same Parquet parts (on a shared file
system or object storage) can be processed by Spark: this module applies the lake's manifest and
the same as-of rules as ``Snapshot`` (events strictly before ``as_of``; the latest item and user
version with ``valid_from`` strictly before it), so leakage is prevented the same way.

It needs the ``spark`` extra (``pip install 'shelf[spark]'`` and a Java runtime); importing this
module does not import pyspark, and a missing extra is reported with that instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shelf.errors import ShelfError


class MissingExtraError(ShelfError):
    """An optional integration was asked for but its extra is not installed."""


def require_pyspark() -> Any:
    try:
        import pyspark.sql
    except ImportError as error:
        raise MissingExtraError(
            "Spark support needs the 'spark' extra: pip install 'shelf[spark]' (pyspark; Spark also needs a Java runtime)"
        ) from error
    return pyspark.sql


@dataclass(frozen=True)
class SparkSnapshot:
    """Spark DataFrames of one lake as of ``as_of`` (None: everything committed)."""

    spark: Any
    lake: Any
    as_of: datetime | None

    def _frame(self, table: str) -> Any:
        parts = self.lake.manifest().parts(table)
        paths = [str(self.lake.path / part.path) for part in parts]
        if not paths:
            from shelf.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA

            schema = {"events": EVENT_SCHEMA, "items": ITEM_SCHEMA, "users": USER_SCHEMA}[table]
            return self.spark.createDataFrame([], ", ".join(f"{f.name} string" for f in schema))
        return self.spark.read.parquet(*paths)

    def events(self) -> Any:
        sql = require_pyspark()
        frame = self._frame("events")
        if self.as_of is not None:
            frame = frame.where(sql.functions.col("timestamp") < sql.functions.lit(self.as_of))
        return frame

    def _latest(self, table: str, key: str) -> Any:
        sql = require_pyspark()
        functions, window = sql.functions, sql.Window
        frame = self._frame(table)
        if self.as_of is not None:
            frame = frame.where(functions.col("valid_from") < functions.lit(self.as_of))
        latest = window.partitionBy(key).orderBy(functions.col("valid_from").desc())
        return frame.withColumn("__rank", functions.row_number().over(latest)).where("__rank = 1").drop("__rank")

    def items(self) -> Any:
        return self._latest("items", "item_id")

    def users(self) -> Any:
        return self._latest("users", "user_id")


def spark_snapshot(lake: Any, as_of: datetime | None = None, spark: Any = None) -> SparkSnapshot:
    """A Spark view of ``lake`` as of ``as_of``; builds a local SparkSession when none is given."""
    sql = require_pyspark()
    if as_of is not None and as_of.tzinfo is None:
        raise ShelfError(f"as_of {as_of.isoformat()} has no time zone; give an aware datetime")
    session = spark or sql.SparkSession.builder.master("local[2]").appName("shelf").config("spark.sql.session.timeZone", "UTC").getOrCreate()
    return SparkSnapshot(session, lake, as_of)
