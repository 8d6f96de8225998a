"""Ingestion assets: landing-zone files loaded verbatim into ``raw.<table>``.

One asset per landed table. Daily tables load one partition per day; loading a range of days
(a backfill) is a single run. Each load replaces its partitions in one transaction.
"""


import hashlib

import dagster as dg

from assets.partitions import USECASE, daily_partitions, partition_dates
from keel.data.ingest import load_partitions, parse_file
from keel.core.spec import TableSpec
from resources.keel_state import KeelState


def raw_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", table])


def build_raw_asset(spec: TableSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=raw_key(spec.name),
        group_name="ingestion",
        kinds={"duckdb", "csv"},
        partitions_def=daily_partitions if spec.partitioned else None,
        backfill_policy=dg.BackfillPolicy.single_run() if spec.partitioned else None,
        code_version="1",
        description=(
            f"{spec.description} As landed: every value as text, extra columns kept in "
            "_extra, lines that hold no row in raw._unparsed with their bytes and reason."
        ),
    )
    def raw_table(context: dg.AssetExecutionContext, keel: KeelState) -> dg.MaterializeResult:
        days = partition_dates(context) if spec.partitioned else [None]
        files = [parse_file(spec, keel.paths.landing, day) for day in days]
        with keel.warehouse() as con:
            load_partitions(con, spec, files, keel.paths.landing, keel.paths.rejected_files)
        fingerprint = hashlib.sha256(
            "\n".join(f"{f.source_file}:{f.sha256}" for f in files).encode()
        ).hexdigest()[:16]
        missing = [f.source_file for f in files if not f.present]
        return dg.MaterializeResult(
            metadata={
                "files_loaded": sum(f.present for f in files),
                "files_missing": dg.MetadataValue.json(missing),
                # Every line of every file, in exactly one of the counts below.
                "lines": sum(f.lines for f in files),
                "header_lines": sum(f.header_lines for f in files),
                "rows_parsed": sum(f.rows_parsed for f in files),
                "continued_lines": sum(f.continued_lines for f in files),
                "lines_unparsed": sum(len(f.unparsed) for f in files),
                "blank_lines": sum(f.blank_lines for f in files),
                "files_rejected": dg.MetadataValue.json(
                    {f.source_file: f.read_error for f in files if f.read_error}
                ),
                "landing_zone": dg.MetadataValue.path(str(keel.paths.landing / spec.name)),
            },
            data_version=dg.DataVersion(fingerprint),
        )

    return raw_table


raw_assets = [build_raw_asset(spec) for spec in USECASE.tables]
