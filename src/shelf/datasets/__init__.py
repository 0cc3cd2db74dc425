"""Readers that turn files and public data sets into batches of raw records.

Reading is one stage of ingest: reader → :mod:`shelf.schema` validation → lake. Nothing here
validates values or writes anything; see :mod:`shelf.datasets.readers`.
"""

from shelf.datasets.public import (
    PUBLIC_DATASETS,
    DatasetSource,
    movielens_100k,
    otto_sample,
    public_dataset,
    rees46,
    yoochoose,
)
from shelf.datasets.readers import (
    DEFAULT_BATCH_ROWS,
    FIELD_ALIASES,
    RawBatch,
    ReadOptions,
    RecordReader,
    canonical_field,
    open_records,
    parse_pairs,
    read_columns,
    read_records,
)

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "FIELD_ALIASES",
    "PUBLIC_DATASETS",
    "DatasetSource",
    "RawBatch",
    "ReadOptions",
    "RecordReader",
    "canonical_field",
    "movielens_100k",
    "open_records",
    "otto_sample",
    "parse_pairs",
    "public_dataset",
    "read_columns",
    "read_records",
    "rees46",
    "yoochoose",
]
