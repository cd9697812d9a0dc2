"""Names of a corpus folder's parts, shared by the writer (pipeline.shards) and the readers
(``build-m3w verify``, the output cleanup) without importing the writer's Beam stages."""

WDS_DIR = "wds"
MMC4_DIR = "mmc4"
PARQUET_DIR = "parquet"
FORMAT_DIRS = {"wds": WDS_DIR, "mmc4": MMC4_DIR, "parquet": PARQUET_DIR}  # output.formats -> folder
MANIFEST = "manifest.json"
