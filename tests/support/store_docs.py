"""Small synthetic companyfacts documents, and a quick offline ingest of them (the storage, ingest
and verify tests build their stores so)."""

from __future__ import annotations

import json

from pipeline.ingest import ingest


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
