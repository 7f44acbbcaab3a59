"""Small synthetic companyfacts documents, and a quick offline ingest of them (the storage, ingest
and verify tests build their stores so); a store's rows in a total order for comparing stores."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from pipeline.ingest import ingest
from pipeline.store import TripletStore
from pipeline.synth_companyfacts import company_document

RAW = ["entity_id", "taxonomy", "concept", "unit", "period_start", "period_end", "accn", "filed", "value"]


def make_docs(folder, first_cik: int, n: int) -> list[str]:
    """n small companyfacts documents: 3 concepts, a few filings each, some re-reported."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for cik in range(first_cik, first_cik + n):
        facts = {}
        for c, concept in enumerate(["Revenues", "Assets", "NetIncomeLoss"]):
            rows = [
                {
                    "start": f"{y}-01-01",
                    "end": f"{y}-12-31",
                    "val": (cik * 1000 + c * 100 + y) * 1e3,
                    "accn": f"000{cik}-{y}",
                    "fy": y,
                    "fp": "FY",
                    "form": "10-K",
                    "filed": f"{y + 1}-02-01",
                }
                for y in range(2015, 2024)
            ]
            facts[concept] = {
                "label": concept,
                "description": f"{concept} of the entity",
                "units": {"USD": rows},
            }
        p = folder / f"CIK{cik:010d}.json"
        p.write_text(json.dumps({"cik": cik, "entityName": f"Company {cik}", "facts": {"us-gaap": facts}}))
        out.append(str(p))
    return out


def quick_ingest(paths, uri):
    """Ingest `paths` into `uri` with the hashed embedder at 8 dimensions (fast, offline)."""
    return ingest(paths, uri, embedder="hashed", embed_dim=8, progress=False)


def synth_docs(folder, first: int, n: int) -> list[str]:
    """n companies of `tunestack synth companyfacts` (realistic filings: amendments, restatements,
    comparatives), companies first .. first+n-1, one CIK##########.json each."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(first, first + n):
        doc = company_document(i, seed=5)
        path = folder / f"CIK{doc['cik']:010d}.json"
        path.write_text(json.dumps(doc))
        out.append(str(path))
    return out


def store_rows(uri, columns=RAW):
    """The live version's rows (`columns`), sorted on all of them: equal for equal store contents."""
    store = TripletStore(str(uri))
    t = pq.read_table(store.triplet_files(), columns=columns, filesystem=store.loc.fs)
    return t.sort_by([(c, "ascending") for c in columns])
