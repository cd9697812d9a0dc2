"""Names of a corpus folder's parts, shared by the writer (pipeline.shards) and the readers
(``build-m3w verify``, the output cleanup) without importing the writer's Beam stages."""

WDS_DIR = "wds"
PARQUET_DIR = "parquet"
MANIFEST = "manifest.json"
