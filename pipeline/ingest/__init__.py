"""Ingest: SEC companyfacts (.json, .json.gz, folders, bulk .zip) and narrative wide CSV → the store."""

from pipeline.ingest.run import IngestReport, ingest, refit
from pipeline.ingest.sources import IngestError

__all__ = ["ingest", "refit", "IngestReport", "IngestError"]
