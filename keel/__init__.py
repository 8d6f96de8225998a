"""Keel: a production ML pipeline built as a Dagster asset graph."""
