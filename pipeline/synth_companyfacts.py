"""A synthetic SEC bulk `companyfacts.zip`: N companies, one companyfacts JSON per member, in the
format of the real archive (`CIK##########.json` members, each `{"cik", "entityName", "facts":
{taxonomy: {concept: {"label", "description", "units": {unit: [fact, …]}}}}}`).

    tunestack synth companyfacts --companies 800 --out bulk.zip

Each company files 10-Qs and a 10-K every fiscal year for 2 to 14 years. A concept is reported in
most of its filings from the year it first appears; balance-sheet (instant) concepts carry no
`start`; flow concepts carry quarterly, year-to-date and annual durations. As in the real data, a
fact is reported again as the comparative of the next year's filing (1 in 10 restated), a 10-K is
now and then amended (10-K/A: the same facts filed again later), the latest report of a period
carries a `frame`, and a few members have no facts at all. Sizes follow the SEC bulk file's mean
(about 6,000 fact rows per company), ranging from a few hundred to about 15,000.

The generator is deterministic in (seed, company index): company i is the same in a 100- and an
800-company archive, and the N-company archive's members are the first N of any larger one.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.synth import (
    _COMPANY_WORDS,
    _EPS_CORES,
    _FLOW_CORES,
    _FLOW_QUALIFIERS,
    _PURE_CORES,
    _SHARE_CORES,
    _STOCK_CORES,
    _STOCK_QUALIFIERS,
    _words,
)

EMPTY_SHARE = 0.01  # members with `"facts": {}` (the real archive has some)
RESTATED_SHARE = 0.1  # comparatives reported with a different value
AMENDED_SHARE = 0.05  # 10-Ks later amended by a 10-K/A that repeats their facts
FORMS = {"Q1": "10-Q", "Q2": "10-Q", "Q3": "10-Q", "FY": "10-K"}


@dataclass(frozen=True)
class _Concept:
    taxonomy: str
    name: str
    unit: str
    instant: bool
    label: str
    description: str
    log_scale: float  # typical log magnitude of its values


def vocabulary() -> list[_Concept]:
    """The concepts companies draw from, most common first (fixed: independent of any seed)."""
    out = [
        _Concept("dei", "EntityCommonStockSharesOutstanding", "shares", True,
                 "Entity Common Stock, Shares Outstanding",
                 "Indicate number of shares outstanding of each class of common stock.", 19.0),
        _Concept("dei", "EntityPublicFloat", "USD", True, "Entity Public Float",
                 "The aggregate market value of the voting and non-voting common equity held by "
                 "non-affiliates.", 21.0),
    ]  # fmt: skip
    specs = (
        [(c + q, "USD", True, 19.0) for q in _STOCK_QUALIFIERS for c in _STOCK_CORES]
        + [(c + q, "USD", False, 19.0) for q in _FLOW_QUALIFIERS for c in _FLOW_CORES]
        + [(c, "shares", "Outstanding" in c or "Issued" in c, 17.0) for c in _SHARE_CORES]
        + [(c, "USD/shares", "Par" in c, 0.5) for c in _EPS_CORES]
        + [(c, "pure", False, -1.5) for c in _PURE_CORES]
    )
    # Interleave the kinds so that every rank band holds some of each (the bare cores come first).
    specs.sort(key=lambda s: (s[0] not in _STOCK_CORES + _FLOW_CORES, zlib.crc32(s[0].encode()) % 7, s[0]))
    for name, unit, instant, scale in specs:
        words = _words(name)
        when = "as of the balance sheet date" if instant else "for the period"
        out.append(_Concept("us-gaap", name, unit, instant, words, f"{words}, {when} (synthetic).", scale))
    return out


def _filings(rng: np.random.Generator, cik: int, years: int) -> list[dict]:
    """One filing per fiscal quarter: Q1-Q3 10-Qs and the FY 10-K, in filing order."""
    fye = 12 if rng.random() < 0.7 else int(rng.integers(1, 12))
    first_fy = int(rng.integers(2009, 2026 - years))
    fy_start = np.datetime64(f"{first_fy - 1}-{fye:02d}", "M") + 1
    out = []
    for q in range(4 * years):
        fp = ("Q1", "Q2", "Q3", "FY")[q % 4]
        q_end = fy_start + 3 * q + 2
        end = (q_end + 1).astype("datetime64[D]") - 1
        filed = end + int(rng.integers(55, 91) if fp == "FY" else rng.integers(25, 46))
        year_start = (fy_start + 12 * (q // 4)).astype("datetime64[D]")
        out.append(
            {
                "fy": first_fy + q // 4,
                "fp": fp,
                "form": FORMS[fp],
                "end": str(end),
                "filed": str(filed),
                "accn": f"{cik:010d}-{int(str(filed)[2:4]):02d}-{q + 1:06d}",
                "q_start": str((q_end - 2).astype("datetime64[D]")),
                "y_start": str(year_start),
                # SEC frames: calendar periods of standard length (no frame for year-to-date spans)
                "frames": _frames(str(end), str((q_end - 2).astype("datetime64[D]")), str(year_start), fp),
            }
        )
    return out


def _values(rng: np.random.Generator, c: _Concept, level: np.ndarray) -> list:
    """Values at log-levels `level` (one per fact), rounded as filers round them."""
    n = len(level)
    if c.unit == "USD/shares":
        return np.round(rng.normal(np.exp(c.log_scale + 0.3 * (level - c.log_scale)), 0.6), 2).tolist()
    if c.unit == "pure":
        return np.round(1 / (1 + np.exp(-(c.log_scale + 0.3 * rng.standard_normal(n)))), 4).tolist()
    v = np.round(np.exp(level + 0.15 * rng.standard_normal(n)), -3 if c.unit == "USD" else 0)
    if c.unit == "USD":
        v[rng.random(n) < 0.04] *= -1
    return v.astype(np.int64).tolist()


def _restated(v, factor: float):
    moved = v * factor
    return round(moved, 4) if isinstance(v, float) else int(round(moved)) + (int(round(moved)) == v)


def _periods(c: _Concept, f: dict) -> list[str | None]:
    """The period starts a filing reports for a concept (None: an instant)."""
    if c.instant:
        return [None]
    if f["fp"] == "FY":
        return [f["y_start"]]
    if f["fp"] == "Q1":
        return [f["q_start"]]
    return [f["q_start"], f["y_start"]]  # Q2/Q3: the quarter and the year to date


def _concept_rows(rng, c: _Concept, filings: list[dict], amended: set[int], level: float) -> list[dict]:
    """Every report of one concept by one company, ordered by period, the latest framed."""
    first = int(rng.integers(0, max(1, len(filings) // 2)))  # concepts appear over the years
    reported = [
        q
        for q, skip, quarterly in zip(
            range(first, len(filings)),
            rng.random(len(filings) - first) < 0.1,
            rng.random(len(filings) - first) < 0.3,
        )
        if not skip and not (c.instant and quarterly and filings[q]["fp"] != "FY")
    ]
    periods = [(q, start) for q in reported for start in _periods(c, filings[q])]
    n = len(periods)
    if n == 0:
        return []
    vals = _values(rng, c, level + 0.02 * np.array([q for q, _ in periods]))
    again = rng.random(n) < 0.9
    restate = rng.random(n) < RESTATED_SHARE
    factor = (1.0 + rng.choice([-1.0, 1.0], n) * rng.uniform(0.01, 0.08, n)).tolist()
    rows = []
    order = sorted(range(n), key=lambda j: (filings[periods[j][0]]["end"], periods[j][1] or ""))
    for j in order:
        q, start = periods[j]
        end, val = filings[q]["end"], vals[j]
        reps = [(filings[q], val)]
        if q + 4 < len(filings) and again[j]:  # next year's comparative, now and then restated
            reps.append((filings[q + 4], _restated(val, factor[j]) if restate[j] else val))
        if q in amended:
            reps.append((_amendment(filings[q]), val))
        for r, (f, v) in enumerate(reps):
            fact = {"end": end, "val": v, "accn": f["accn"], "fy": f["fy"], "fp": f["fp"],
                    "form": f["form"], "filed": f["filed"]}  # fmt: skip
            if start is not None:
                fact = {"start": start, **fact}
            frame = filings[q]["frames"].get(start)
            if frame and r == len(reps) - 1:  # SEC frames the latest report of a period
                fact["frame"] = frame
            rows.append(fact)
    return rows


def company_document(i: int, seed: int = 0, vocab: list[_Concept] | None = None) -> dict:
    """Company i's companyfacts document (a dict ready for json.dumps)."""
    vocab = vocab or vocabulary()
    rng = np.random.default_rng([seed, 13, i])
    cik = 1_000_000 + (i * 7919 + seed * 104_729) % 9_000_000  # one-to-one for i < 9M
    w = _COMPANY_WORDS
    name = " ".join(part[rng.integers(len(part))] for part in w) + ("" if i < 1000 else f" {i}")
    if rng.random() < EMPTY_SHARE:
        return {"cik": cik, "entityName": name, "facts": {}}
    years = int(rng.integers(2, 15))
    filings = _filings(rng, cik, years)
    amended = {q for q in range(3, len(filings), 4) if rng.random() < AMENDED_SHARE}
    size = rng.normal(0.0, 1.2)  # the company's size, shared by its money and share amounts
    rank = np.arange(1, len(vocab) + 1)
    p = np.minimum(0.95, 4.5 * rank**-0.5) * rng.uniform(0.5, 1.0)
    facts: dict = {}
    for k in np.flatnonzero(rng.random(len(vocab)) < p):
        c = vocab[k]
        rows = _concept_rows(rng, c, filings, amended, c.log_scale + size + 0.7 * rng.standard_normal())
        if rows:
            body = {"label": c.label, "description": c.description, "units": {c.unit: rows}}
            facts.setdefault(c.taxonomy, {})[c.name] = body
    return {"cik": cik, "entityName": name, "facts": facts}


def _amendment(f: dict) -> dict:
    filed = str(np.datetime64(f["filed"]) + 30)
    return dict(f, form="10-K/A", filed=filed, accn=f"{f['accn'][:-6]}{int(f['accn'][-6:]) + 500_000:06d}")


def _frames(end: str, q_start: str, y_start: str, fp: str) -> dict:
    """The frame of each period a filing reports, by its start (None: the instant at its end)."""
    month = np.datetime64(end, "M").astype(int)
    year, quarter = 1970 + month // 12, (month % 12) // 3 + 1
    frames = {None: f"CY{year}Q{quarter}I", q_start: f"CY{year}Q{quarter}"}
    if fp == "FY":
        frames[y_start] = f"CY{year}"
    return frames


def synth_companyfacts(out: str, companies: int, seed: int = 0) -> dict:
    """Write a bulk zip of `companies` synthetic companyfacts documents; returns a summary."""
    if companies < 1:
        raise ValueError("companies must be at least 1")
    vocab = vocabulary()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    facts = 0
    try:
        # Deflate level 1: the real archive is deflated too; level 1 writes ~4x faster than 6.
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for i in range(companies):
                doc = company_document(i, seed, vocab)
                facts += sum(
                    len(rows)
                    for c in doc["facts"].values()
                    for b in c.values()
                    for rows in b["units"].values()
                )
                zf.writestr(f"CIK{doc['cik']:010d}.json", json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {
        "out": out,
        "companies": companies,
        "fact_rows": facts,
        "bytes": os.path.getsize(out),
        "seed": seed,
    }
