"""tunestack: train, tune and serve small neural models on Ray.

The package layout follows the data flow:
ingest → store → data → models → train → tune → registry, and `serve/` beside it.
"""

__version__ = "0.1.0"
