"""Synthetic data: a GAAP triplet store of any size, routing logs with a known rule, and a small
format-faithful SEC companyfacts document.

`synth_gaap` writes a store in exactly the layout `tunestack ingest` writes, in bounded memory:
entities are planned first (only their fact counts), then generated one at a time, bucket by
bucket, and written in chunks of whole row groups. Each (concept, unit) pair has a generating
distribution — heavy-tailed, sometimes mostly positive, share counts integral — and its scaler is
fitted on a sample drawn from that distribution *before* any row is written, so every row's
`scaled_value` is consistent with the pairs table whatever the store size.

`synth_routing` writes routing logs whose labels are drawn from a known, feature-dependent
P(lightweight suffices | features) (easy and hard requests), and the cost-quality curve of the
oracle router beside them; the old logs (a rule with labels flipped uniformly) stay available.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.sequences import ROUTING_FEATURES
from pipeline.store.embed import get_embedder, pair_text
from pipeline.store.features import FeatureSpace, fit_feature_space
from pipeline.store.layout import (
    DEFAULT_BUCKETS,
    DEFAULT_ROW_GROUP,
    PAIRS_FILE,
    TRIPLET_SCHEMA,
    VAL_FOLDS,
    TripletStore,
    bucket_file,
    bucket_of,
    fold_of,
    manifest_embedder,
    write_pairs,
)
from pipeline.store.scaler import PairScaler, fit_scaler, scale_by_pair

CHUNK_ROWS = 262_144  # rows generated before a write; rounded to whole row groups
SCALER_SAMPLE = 20_000  # values drawn per pair to fit its scaler (as ingest's sample cap)
GENERATED_PAIRS = 500

# ---- generated pair vocabulary ----------------------------------------------------------------
_STOCK_CORES = [  # balance-sheet (instant) USD concepts
    "Cash",
    "CashAndCashEquivalentsAtCarryingValue",
    "AccountsReceivable",
    "InventoryNet",
    "PrepaidExpense",
    "PropertyPlantAndEquipment",
    "Goodwill",
    "IntangibleAssetsNetExcludingGoodwill",
    "Assets",
    "Liabilities",
    "AccountsPayable",
    "AccruedLiabilities",
    "ContractWithCustomerLiability",
    "LongTermDebt",
    "ShortTermBorrowings",
    "OperatingLeaseLiability",
    "DeferredTaxAssetsNet",
    "DeferredTaxLiabilities",
    "StockholdersEquity",
    "RetainedEarningsAccumulatedDeficit",
    "MarketableSecurities",
    "OtherAssets",
    "OtherLiabilities",
    "CommercialPaper",
    "FinanceLeaseLiability",
    "AccumulatedOtherComprehensiveIncomeLossNetOfTax",
    "AvailableForSaleSecuritiesDebtSecurities",
    "EmployeeRelatedLiabilities",
    "TaxesPayable",
    "RestrictedCash",
]
_STOCK_QUALIFIERS = ["", "Current", "Noncurrent", "Net", "Gross", "FairValueDisclosure", "RelatedParty"]
_FLOW_CORES = [  # income and cash-flow (duration) USD concepts
    "Revenues",
    "CostOfRevenue",
    "GrossProfit",
    "OperatingIncomeLoss",
    "NetIncomeLoss",
    "ResearchAndDevelopmentExpense",
    "SellingGeneralAndAdministrativeExpense",
    "IncomeTaxExpenseBenefit",
    "InterestExpense",
    "DepreciationDepletionAndAmortization",
    "ShareBasedCompensation",
    "PaymentsToAcquirePropertyPlantAndEquipment",
    "ProceedsFromIssuanceOfLongTermDebt",
    "RepaymentsOfLongTermDebt",
    "PaymentsForRepurchaseOfCommonStock",
    "PaymentsOfDividends",
    "NetCashProvidedByUsedInOperatingActivities",
    "NetCashProvidedByUsedInInvestingActivities",
    "NetCashProvidedByUsedInFinancingActivities",
    "OtherComprehensiveIncomeLossNetOfTax",
    "RestructuringCharges",
    "AmortizationOfIntangibleAssets",
    "OtherNonoperatingIncomeExpense",
    "InvestmentIncomeInterest",
    "GainLossOnInvestments",
    "IncreaseDecreaseInAccountsReceivable",
    "IncreaseDecreaseInInventories",
    "IncreaseDecreaseInAccountsPayable",
    "PaymentsToAcquireBusinessesNetOfCashAcquired",
    "ProceedsFromSaleOfMarketableSecurities",
]
_FLOW_QUALIFIERS = [
    "",
    "Domestic",
    "Foreign",
    "Federal",
    "State",
    "ContinuingOperations",
    "DiscontinuedOperations",
    "RelatedParty",
    "Other",
]
_SHARE_CORES = [
    "CommonStockSharesOutstanding",
    "CommonStockSharesIssued",
    "CommonStockSharesAuthorized",
    "WeightedAverageNumberOfSharesOutstandingBasic",
    "WeightedAverageNumberOfDilutedSharesOutstanding",
    "TreasuryStockShares",
    "StockRepurchasedDuringPeriodShares",
    "StockIssuedDuringPeriodSharesNewIssues",
    "PreferredStockSharesAuthorized",
    "ShareBasedCompensationArrangementOptionsOutstandingNumber",
    "ShareBasedCompensationArrangementOptionsGrantedNumber",
    "RestrictedStockUnitsVestedNumber",
    "AntidilutiveSecuritiesExcludedFromComputationOfEarningsPerShareAmount",
]
_EPS_CORES = [
    "EarningsPerShareBasic",
    "EarningsPerShareDiluted",
    "CommonStockDividendsPerShareDeclared",
    "CommonStockDividendsPerShareCashPaid",
    "IncomeLossFromContinuingOperationsPerBasicShare",
    "IncomeLossFromContinuingOperationsPerDilutedShare",
    "CommonStockParOrStatedValuePerShare",
    "ShareBasedCompensationArrangementOptionsExercisePrice",
    "SharePrice",
]
_PURE_CORES = [
    "EffectiveIncomeTaxRateContinuingOperations",
    "EffectiveIncomeTaxRateReconciliationAtFederalStatutoryIncomeTaxRate",
    "DebtInstrumentInterestRateStatedPercentage",
    "ConcentrationRiskPercentage",
    "FairValueInputsDiscountRate",
    "ShareBasedCompensationArrangementExpectedVolatilityRate",
    "ShareBasedCompensationArrangementRiskFreeInterestRate",
    "ShareBasedCompensationArrangementExpectedDividendRate",
    "LessorOperatingLeaseDiscountRate",
    "OperatingLeaseWeightedAverageDiscountRatePercent",
]
_COMPANY_WORDS = (
    [
        "Northwind",
        "Bluewater",
        "Granite",
        "Summit",
        "Cedar",
        "Harbor",
        "Ironwood",
        "Silverline",
        "Keystone",
        "Meridian",
        "Redrock",
        "Evergreen",
        "Lakeshore",
        "Pioneer",
        "Atlas",
        "Beacon",
    ],
    [
        "Holdings",
        "Industries",
        "Systems",
        "Technologies",
        "Energy",
        "Foods",
        "Pharmaceuticals",
        "Logistics",
        "Financial",
        "Materials",
        "Semiconductor",
        "Retail",
        "Networks",
        "Health",
    ],
    ["Inc.", "Corp.", "Co.", "Group Inc.", "Ltd.", "PLC"],
)

_SIGNED_LOGNORMAL, _RATIO, _SOURCE_QUANTILES = 0, 1, 2
_FP = ["Q1", "Q2", "Q3", "FY"]
_FORM = ["10-Q", "10-Q", "10-Q", "10-K"]


def _words(concept: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", concept)


@dataclass
class _Pairs:
    """Everything known about the pairs of a synthetic store, as arrays indexed by position
    (positions are sorted by pair id)."""

    pair_id: np.ndarray  # int32
    concept: list[str]
    unit: list[str]
    taxonomy: list[str]
    label: list[str | None]
    description: list[str | None]
    embedding: np.ndarray  # float32 [P, dim]
    freq: np.ndarray  # probability that a filing reports the pair (Zipf-like over pairs)
    instant: np.ndarray  # bool: a balance-sheet fact (no period_start)
    kind: np.ndarray  # _SIGNED_LOGNORMAL | _RATIO | _SOURCE_QUANTILES
    mu: np.ndarray
    sigma: np.ndarray
    p_pos: np.ndarray  # probability of a positive value
    p_zero: np.ndarray  # probability of an exact zero
    quantum: np.ndarray  # values are rounded to multiples of this (0 = not rounded)
    source: list[PairScaler | None]  # _SOURCE_QUANTILES: the source store's scaler, read inversely

    def __len__(self) -> int:
        return len(self.pair_id)

    def values(self, pos: np.ndarray, z: np.ndarray, u_sign: np.ndarray, u_zero: np.ndarray) -> np.ndarray:
        """Values of rows of pairs `pos` from standard-normal scores `z` and uniforms for sign and zero."""
        kind = self.kind[pos]
        latent = self.mu[pos] + self.sigma[pos] * z
        v = np.where(u_sign < self.p_pos[pos], 1.0, -1.0) * np.exp(np.minimum(latent, 700.0))
        ratio = kind == _RATIO
        v[ratio] = 1.0 / (1.0 + np.exp(-latent[ratio]))
        src = np.flatnonzero(kind == _SOURCE_QUANTILES)
        if src.size:
            order = src[np.argsort(pos[src], kind="stable")]
            ids = pos[order]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            for s, e in zip(starts, np.r_[starts[1:], len(order)]):
                rows, scaler = order[s:e], self.source[int(ids[s])]
                v[rows] = (
                    np.full(e - s, scaler.mean) if scaler.kind == "standard" else scaler.inverse(z[rows])
                )
        v[u_zero < self.p_zero[pos]] = 0.0
        q = self.quantum[pos]
        rounded = q > 0
        v[rounded] = np.round(v[rounded] / q[rounded]) * q[rounded]
        return v

    def fit_scalers(self, rng: np.random.Generator, sample: int = SCALER_SAMPLE) -> list[PairScaler]:
        """One scaler per pair, fitted on `sample` draws from the pair's generating distribution
        (the marginal over entities and filings, which is what the rows are drawn from)."""
        out = []
        for k in range(len(self)):
            pos = np.full(sample, k)
            v = self.values(pos, rng.standard_normal(sample), rng.random(sample), rng.random(sample))
            out.append(fit_scaler(v))
        return out


def _generated_pairs(rng: np.random.Generator, embedder: str, embed_dim: int) -> tuple[_Pairs, FeatureSpace]:
    """~500 plausible us-gaap pairs with distributions of their kind, embedded like ingest does
    (a feature space fitted on them, numbered 1 until the writer numbers it)."""
    stock = [(c + q, "USD", True) for c in _STOCK_CORES for q in _STOCK_QUALIFIERS]
    flow = [(c + q, "USD", False) for c in _FLOW_CORES for q in _FLOW_QUALIFIERS]
    usd = [stock[i] for i in rng.permutation(len(stock))[:200]] + [
        flow[i] for i in rng.permutation(len(flow))[:240]
    ]
    shares = [
        (c, "shares", "Outstanding" in c or "Authorized" in c or "Issued" in c or c == "TreasuryStockShares")
        for c in _SHARE_CORES
    ]
    shares += [(c + "Other", "shares", inst) for c, _, inst in shares[:8]]
    eps = [(c, "USD/shares", "Par" in c or c == "SharePrice") for c in _EPS_CORES]
    eps += [(c + "Adjusted", "USD/shares", inst) for c, _, inst in eps[:8]]
    pure = [(c, "pure", False) for c in _PURE_CORES] + [
        (c + "Maximum", "pure", False) for c in _PURE_CORES[:7]
    ]
    specs = sorted((usd + shares + eps + pure)[:GENERATED_PAIRS])  # (concept, unit, instant)
    n = len(specs)
    concept = [s[0] for s in specs]
    unit = [s[1] for s in specs]
    instant = np.array([s[2] for s in specs])
    label, description = [], []
    for c, u, inst in specs:
        words = _words(c)
        label.append(words)
        what = {
            "USD": "Amount",
            "shares": "Number of shares",
            "USD/shares": "Per-share amount",
            "pure": "Rate or percentage",
        }[u]
        when = "as of the balance sheet date" if inst else "for the period"
        description.append(f"{what} of {words.lower()} {when}.")
    kind = np.where(np.array(unit) == "pure", _RATIO, _SIGNED_LOGNORMAL)
    mu, sigma = np.empty(n), np.empty(n)
    p_pos, p_zero, quantum = np.ones(n), np.zeros(n), np.zeros(n)
    for k, u in enumerate(unit):
        if u == "USD":
            mu[k], sigma[k] = rng.uniform(math.log(1e5), math.log(5e9)), rng.uniform(1.0, 2.5)
            mostly_positive = rng.random() < 0.75
            p_pos[k] = rng.uniform(0.97, 1.0) if mostly_positive else rng.uniform(0.3, 0.9)
            p_zero[k] = rng.uniform(0.01, 0.1) if rng.random() < 0.2 else 0.0
            quantum[k] = 1000.0 if rng.random() < 0.7 else 1.0
        elif u == "shares":
            mu[k], sigma[k], quantum[k] = (
                rng.uniform(math.log(1e6), math.log(5e9)),
                rng.uniform(0.8, 2.0),
                1.0,
            )
        elif u == "USD/shares":
            mu[k], sigma[k], quantum[k] = (
                rng.uniform(math.log(0.2), math.log(5.0)),
                rng.uniform(0.5, 1.2),
                0.01,
            )
            p_pos[k] = rng.uniform(0.8, 0.99)
        else:  # pure: a rate in (0, 1), as a logistic of a normal
            mu[k], sigma[k], quantum[k] = rng.uniform(-3.0, 0.0), rng.uniform(0.2, 0.8), 1e-4
    # Zipf-like frequencies: the pair of rank r is reported in a filing with probability ∝ r^-0.5.
    rank = rng.permutation(n) + 1
    freq = np.minimum(0.95, 1.2 * rank**-0.5)
    emb = get_embedder(embedder)
    raw = emb.embed([pair_text(c, u, lab, d) for c, u, lab, d in zip(concept, unit, label, description)])
    space = fit_feature_space(raw, embed_dim, emb.info(), version=1)
    pairs = _Pairs(
        pair_id=np.arange(n, dtype=np.int32),
        concept=concept,
        unit=unit,
        taxonomy=["us-gaap"] * n,
        label=label,
        description=description,
        embedding=space.project(raw),
        freq=freq,
        instant=instant,
        kind=kind,
        mu=mu,
        sigma=sigma,
        p_pos=p_pos,
        p_zero=p_zero,
        quantum=quantum,
        source=[None] * n,
    )
    return pairs, space


def _pairs_from_store(uri: str) -> tuple[_Pairs, FeatureSpace]:
    """Reuse a store's pairs (names, labels, embeddings, feature space); each pair's values follow
    the source scaler read backwards (its quantile function), its frequency the source's pair counts."""
    src = TripletStore(uri)
    src.require()
    space = src.feature_space()
    table = src.read_pairs().sort_by("pair_id")
    rows = table.to_pylist()
    n = len(rows)
    if n == 0:
        raise ValueError(f"store {uri} has no pairs to reuse")
    scalers = [PairScaler.from_row(r) for r in rows]
    counts = np.array([r["count"] or 1 for r in rows], dtype=np.float64)
    unit = [r["unit"] for r in rows]
    concept = [r["concept"] for r in rows]
    quantum = np.array(
        [{"USD": 1.0, "shares": 1.0, "USD/shares": 0.01, "pure": 1e-4}.get(u, 0.0) for u in unit]
    )
    # Whether a pair is a balance-sheet (instant) fact, from its name: the source keeps no flag.
    instant = np.array(
        [
            u == "shares"
            or not re.search(
                r"Expense|Revenue|Income|Payments|Proceeds|Increase|Cash"
                r"Provided|PerShare|Rate|Gain|Loss",
                c,
            )
            for c, u in zip(concept, unit)
        ]
    )
    emb = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(), dtype=np.float32)
    pairs = _Pairs(
        pair_id=np.array([r["pair_id"] for r in rows], dtype=np.int32),
        concept=concept,
        unit=unit,
        taxonomy=["dei" if c.startswith("Entity") else "us-gaap" for c in concept],
        label=[r["label"] for r in rows],
        description=[r["description"] for r in rows],
        embedding=emb.reshape(n, -1),
        freq=np.minimum(0.95, 0.95 * counts / counts.max()),
        instant=instant,
        kind=np.full(n, _SOURCE_QUANTILES),
        mu=np.zeros(n),
        sigma=np.ones(n),
        p_pos=np.ones(n),
        p_zero=np.zeros(n),
        quantum=quantum,
        source=scalers,
    )
    return pairs, space


# ---- entities ---------------------------------------------------------------------------------
def _cik(i: int, seed: int) -> int:
    # 7919 is coprime with 9,000,000, so i ↦ cik is one-to-one for i < 9M: every entity distinct.
    return 1_000_000 + (i * 7919 + seed * 104_729) % 9_000_000


def _entity_mask(i: int, seed: int, pairs: _Pairs) -> tuple[np.random.Generator, np.ndarray]:
    """The entity's (pair × filing) report mask; the generator continues with its other draws."""
    rng = np.random.default_rng([seed, 1, i])
    n_filings = int(rng.integers(8, 65))  # 2 to 16 years of quarterly filings
    coverage = rng.uniform(0.4, 1.0)
    return rng, rng.random((len(pairs), n_filings)) < (pairs.freq * coverage)[:, None]


def _entity_table(i: int, keep: int, seed: int, pairs: _Pairs) -> pa.Table:
    """All rows of entity i (its first `keep` of them in generation order when it is truncated):
    raw columns plus the latent draws (_pos, _z, _us, _uz) its values are computed from."""
    rng, mask = _entity_mask(i, seed, pairs)
    pos, k = np.nonzero(mask)  # ordered by pair, then filing: the store's sort order
    if keep < len(pos):
        sel = np.sort(rng.choice(len(pos), keep, replace=False))
        pos, k = pos[sel], k[sel]
    n, n_filings = len(pos), mask.shape[1]
    cik = _cik(i, seed)
    entity_id = f"{cik:010d}"
    w = _COMPANY_WORDS
    name = f"{w[0][rng.integers(len(w[0]))]} {w[1][rng.integers(len(w[1]))]} {w[2][rng.integers(len(w[2]))]}"
    # Filings: one per fiscal quarter; the fourth of each year is the 10-K.
    fye = 12 if rng.random() < 0.7 else int(rng.integers(1, 12))
    first_fy = int(rng.integers(2009, 2026 - (n_filings + 3) // 4))  # the last period ends by 2025
    fy_start = np.datetime64(f"{first_fy - 1}-{fye:02d}", "M") + 1
    q_end = fy_start + 3 * np.arange(n_filings) + 2  # month of each quarter's end
    end = (q_end + 1).astype("datetime64[D]") - 1
    annual = np.arange(n_filings) % 4 == 3
    start = np.where(annual, (q_end - 11).astype("datetime64[D]"), (q_end - 2).astype("datetime64[D]"))
    filed = end + np.where(annual, rng.integers(55, 91, n_filings), rng.integers(25, 46, n_filings))
    filed_year = filed.astype("datetime64[Y]").astype(int) + 1970
    accn = [f"{cik:010d}-{y % 100:02d}-{j + 1:06d}" for j, y in enumerate(filed_year)]
    fold = np.array([fold_of(a) for a in accn], dtype=np.int16)
    # Values: z = company size (shared by all pairs) + entity-pair level + fact noise, N(0, 1) overall.
    z_entity, z_pair = rng.standard_normal(), rng.standard_normal(len(pairs))
    z = 0.6 * z_entity + 0.5 * z_pair[pos] + math.sqrt(1 - 0.36 - 0.25) * rng.standard_normal(n)

    def repeat(s: str) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([s])).cast(
            pa.string()
        )

    def pick(values: list[str], idx: np.ndarray) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), pa.array(values)).cast(
            pa.string()
        )

    return pa.table(
        {
            "entity_id": repeat(entity_id),
            "entity_name": repeat(name),
            "period_start": pa.array(start[k], pa.date32(), mask=pairs.instant[pos]),
            "period_end": pa.array(end[k], pa.date32()),
            "fy": pa.array((first_fy + k // 4).astype(np.int32)),
            "fp": pick(_FP, k % 4),
            "form": pick(_FORM, k % 4),
            "filed": pa.array(filed[k], pa.date32()),
            "accn": pick(accn, k),
            "fold": pa.array(fold[k]),
            "_pos": pa.array(pos.astype(np.int32)),
            "_z": pa.array(z),
            "_us": pa.array(rng.random(n)),
            "_uz": pa.array(rng.random(n)),
        }
    )


class _BucketWriter:
    """Buffers entity tables for one bucket file and writes them in whole row groups."""

    def __init__(self, path: str, fs, pairs: _Pairs, scalers: dict[int, PairScaler], row_group_size: int):
        self.writer = pq.ParquetWriter(path, TRIPLET_SCHEMA, filesystem=fs)
        self.pairs, self.scalers, self.rgs = pairs, scalers, row_group_size
        self.chunk = max(row_group_size, CHUNK_ROWS // row_group_size * row_group_size)
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.counts = np.zeros(len(pairs), dtype=np.int64)
        self.concept, self.unit, self.taxonomy = (
            pa.array(pairs.concept),
            pa.array(pairs.unit),
            pa.array(pairs.taxonomy),
        )

    def add(self, t: pa.Table) -> None:
        self.buffer.append(t)
        self.buffered += t.num_rows
        if self.buffered >= self.chunk:
            self._flush(final=False)

    def close(self) -> None:
        self._flush(final=True)
        self.writer.close()

    def _flush(self, final: bool) -> None:
        if not self.buffered:
            return
        t = pa.concat_tables(self.buffer)
        n = t.num_rows if final else t.num_rows // self.rgs * self.rgs
        out, rest = t.slice(0, n), t.slice(n)
        self.buffer, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows
        pos = out.column("_pos").to_numpy()
        p = self.pairs
        value = p.values(
            pos, out.column("_z").to_numpy(), out.column("_us").to_numpy(), out.column("_uz").to_numpy()
        )
        pair_id = p.pair_id[pos]
        idx = pa.array(pos)
        cols = {
            "concept": pa.DictionaryArray.from_arrays(idx, self.concept).cast(pa.string()),
            "unit": pa.DictionaryArray.from_arrays(idx, self.unit).cast(pa.string()),
            "taxonomy": pa.DictionaryArray.from_arrays(idx, self.taxonomy).cast(pa.string()),
            "value": pa.array(value),
            "scaled_value": pa.array(scale_by_pair(pair_id, value, self.scalers)),
            "pair_id": pa.array(pair_id),
        }
        table = pa.table(
            {f.name: cols[f.name] if f.name in cols else out.column(f.name) for f in TRIPLET_SCHEMA}
        )
        self.writer.write_table(table.cast(TRIPLET_SCHEMA), row_group_size=self.rgs)
        self.counts += np.bincount(pos, minlength=len(p))


def synth_gaap(
    out_uri: str,
    triplets: int,
    from_store: str | None = None,
    seed: int = 0,
    row_group_size: int = DEFAULT_ROW_GROUP,
    embedder: str = "hashed",
    embed_dim: int = 64,
    buckets: int = DEFAULT_BUCKETS,
) -> dict:
    """Write a complete store of exactly `triplets` synthetic facts at `out_uri` (a new version
    replacing whatever store is there) and return a summary.

    Pairs come from `from_store` (its names, labels, embeddings and embedder; values following its
    scalers) or are ~500 generated us-gaap pairs embedded with `embedder` + PCA to `embed_dim`. Facts are unique per
    (entity, concept, unit, period_start, period_end); memory stays bounded whatever `triplets`.
    """
    if triplets < 1:
        raise ValueError(f"triplets must be at least 1, got {triplets}")
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0])
    if from_store:
        pairs, space = _pairs_from_store(from_store)
    else:
        pairs, space = _generated_pairs(rng, embedder, embed_dim)
    fitted = pairs.fit_scalers(rng)
    scalers = {int(pid): s for pid, s in zip(pairs.pair_id, fitted)}

    # Plan: how many rows each entity contributes (only counts are kept), until `triplets` rows.
    plan: dict[int, list[tuple[str, int, int]]] = {}
    total = i = 0
    while total < triplets:
        count = int(_entity_mask(i, seed, pairs)[1].sum())
        if count:
            keep = min(count, triplets - total)
            entity_id = f"{_cik(i, seed):010d}"
            plan.setdefault(bucket_of(entity_id, buckets), []).append((entity_id, i, keep))
            total += keep
        i += 1

    store = TripletStore(out_uri)
    with store.writing():  # one writer at a time; the previous versions stay for readers
        # The written store's own feature version: after any it already keeps (it is replaced whole).
        space = replace(space, version=max(store.feature_versions(), default=0) + 1)
        staged = store.stage()
        try:
            files, counts = [], np.zeros(len(pairs), dtype=np.int64)
            for b in sorted(plan):
                name = bucket_file(b)
                w = _BucketWriter(staged.join(name), staged.loc.fs, pairs, scalers, row_group_size)
                try:
                    for _, ent, keep in sorted(plan[b]):  # by entity id: the store's sort order
                        w.add(_entity_table(ent, keep, seed, pairs))
                finally:
                    w.close()
                counts += w.counts
                files.append(name)
            rows = []
            for k in np.flatnonzero(counts):
                rows.append(
                    {
                        "pair_id": int(pairs.pair_id[k]),
                        "concept": pairs.concept[k],
                        "unit": pairs.unit[k],
                        "label": pairs.label[k],
                        "description": pairs.description[k],
                        "count": int(counts[k]),
                        **fitted[k].to_row(),
                        "embedding": pairs.embedding[k].tolist(),
                    }
                )
            write_pairs(staged.join(PAIRS_FILE), rows, space.embed_dim, store.loc.fs)
            staged.drop_scratch()
            entities = sum(len(v) for v in plan.values())
            params = {
                "kind": "gaap",
                "triplets": triplets,
                "from_store": from_store,
                "seed": seed,
                "row_group_size": row_group_size,
                "embedder": space.embedder["name"],
                "buckets": buckets,
            }
            manifest = staged.commit(
                {
                    "counts": {"triplets": int(counts.sum()), "pairs": len(rows), "entities": entities},
                    "embedder": manifest_embedder(space),
                    "buckets": buckets,
                    "row_group_size": row_group_size,
                    "val_folds": VAL_FOLDS,
                    "triplet_files": files,
                    "inputs": [{"synth": params, "generated": time.strftime("%Y-%m-%dT%H:%M:%S")}],
                },
                space,
            )
        except BaseException:
            staged.abort()
            raise
    seconds = time.perf_counter() - t0
    return {
        "store": out_uri,
        "store_version": manifest["version"],
        "triplets": int(counts.sum()),
        "pairs": len(rows),
        "entities": entities,
        "files": len(files),
        "seconds": round(seconds, 3),
        "triplets_per_second": round(float(counts.sum()) / seconds, 1),
    }


# ---- routing logs -----------------------------------------------------------------------------
ROUTING_WEIGHTS = {
    "similarity": 4.0,
    "recency": 1.0,
    "log1p_frequency": 0.5,
    "success_rate": 2.0,
    "metadata_match": 1.0,
}
ROUTING_THRESHOLD = 5.4  # about half the clean labels are 1
ROUTING_SHARPNESS = 4.0  # logistic slope per unit of score at metadata_match 0.5 (see routing_probability)
DIFFICULTIES = ("features", "uniform")
ROUTING_RULE = (
    "score = 4.0*similarity + 1.0*recency + 0.5*ln(1+frequency) + 2.0*success_rate + 1.0*metadata_match"
)
ROUTING_LABELS = {
    "features": "label ~ Bernoulli(P), P(lightweight suffices | features) = sigmoid(4.0*(0.5 + "
    "metadata_match)*(score - 5.4)): far from 5.4 a request is easy, near it hard, and the more metadata "
    "matches the cached request, the more predictable its outcome",
    "uniform": "label = 1 iff score > 5.4, flipped with probability `noise` independently of the features",
}
ROUTING_CHUNK = 1_000_000
ORACLE_FILE = "routing_oracle.json"


def _routing_score(features: dict[str, np.ndarray]) -> np.ndarray:
    f = {k: np.asarray(features[k], dtype=np.float64) for k in ROUTING_FEATURES}
    return (
        ROUTING_WEIGHTS["similarity"] * f["similarity"]
        + ROUTING_WEIGHTS["recency"] * f["recency"]
        + ROUTING_WEIGHTS["log1p_frequency"] * np.log1p(f["frequency"])
        + ROUTING_WEIGHTS["success_rate"] * f["success_rate"]
        + ROUTING_WEIGHTS["metadata_match"] * f["metadata_match"]
    )


def routing_rule(features: dict[str, np.ndarray]) -> np.ndarray:
    """The clean label (int8) of the uniform-noise logs, from the float32 features as stored."""
    return (_routing_score(features) > ROUTING_THRESHOLD).astype(np.int8)


def routing_probability(features: dict[str, np.ndarray]) -> np.ndarray:
    """P(the lightweight model suffices | features) of the default logs (float64): what an oracle
    router knows. Difficulty depends on the features: a request whose score is far from the
    threshold is easy, one near it is a coin flip, and the logistic's slope grows with
    metadata_match (a request matching the cached one's metadata behaves predictably)."""
    slope = ROUTING_SHARPNESS * (0.5 + np.asarray(features["metadata_match"], dtype=np.float64))
    z = np.clip(slope * (_routing_score(features) - ROUTING_THRESHOLD), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))


def oracle_probability(features: dict[str, np.ndarray], meta: dict) -> np.ndarray | None:
    """The true P(lightweight suffices | features) of logs that synth_routing wrote (`meta`: their
    routing.json), or None when the logs are not ours."""
    if meta.get("rule") != ROUTING_RULE or meta.get("threshold") != ROUTING_THRESHOLD:
        return None
    if meta.get("difficulty") == "features" and meta.get("sharpness") == ROUTING_SHARPNESS:
        return routing_probability(features)
    if meta.get("difficulty") == "uniform" and meta.get("noise") is not None:
        return np.where(routing_rule(features) == 1, 1.0 - meta["noise"], meta["noise"])
    return None


def _routing_chunk(
    rng: np.random.Generator, n: int, difficulty: str, noise: float
) -> tuple[pa.Table, np.ndarray]:
    """(the chunk's table, the oracle probability of each row)."""
    age_hours = rng.exponential(72.0, n)
    f = {
        "similarity": rng.beta(2.0, 2.0, n),  # cosine-like similarity of the request to the cached one
        "recency": np.exp(-age_hours / 168.0),  # freshness: 1 = just now, 1/e after a week
        "frequency": np.floor(rng.lognormal(math.log(3.0), 1.2, n)),  # times seen before
        "success_rate": rng.beta(6.0, 2.0, n),  # lightweight model's past success rate
        "metadata_match": rng.binomial(4, 0.5, n) / 4.0,  # fraction of matching metadata fields
    }
    f = {k: v.astype(np.float32) for k, v in f.items()}
    draw = rng.random(n)
    if difficulty == "features":
        p = routing_probability(f)
        label = (draw < p).astype(np.int8)
    else:
        clean = routing_rule(f)
        p = np.where(clean == 1, 1.0 - noise, noise)
        label = np.where(draw < noise, 1 - clean, clean).astype(np.int8)
    cols = {k: pa.array(f[k]) for k in ROUTING_FEATURES}
    cols["label"] = pa.array(label)
    return pa.table(cols), p


def synth_routing(
    out_dir: str, rows: int, seed: int = 0, noise: float | None = None, difficulty: str | None = None
) -> dict:
    """Write `out_dir/routing.parquet` (five float32 features, int8 label), `routing.json` (how the
    labels were drawn) and `routing_oracle.json` (the cost-quality curve of the oracle router,
    which routes by the true P(lightweight suffices | features)).

    difficulty "features" (the default): each label is drawn from that feature-dependent
    probability (routing_probability), so some requests are easy and some hard. "uniform" (the
    default when `noise` is given): the old logs, a deterministic rule with labels flipped with
    probability `noise` independently of the features (no request is confidently easy)."""
    from pipeline.router_metrics import cost_quality_curve

    difficulty = difficulty or ("uniform" if noise is not None else "features")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if difficulty == "features" and noise is not None:
        raise ValueError("noise applies to difficulty 'uniform' only (the default logs draw each label)")
    noise = 0.1 if noise is None and difficulty == "uniform" else noise
    if difficulty == "uniform" and not 0.0 <= noise < 0.5:
        raise ValueError(f"noise must be in [0, 0.5), got {noise}")
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "routing.parquet")
    writer = None
    labels, oracle = [], []  # 9 bytes a row: the oracle's curve needs every row's probability
    try:
        for c, start in enumerate(range(0, rows, ROUTING_CHUNK)):
            n = min(ROUTING_CHUNK, rows - start)
            t, p = _routing_chunk(np.random.default_rng([seed, 7, c]), n, difficulty, noise or 0.0)
            writer = writer or pq.ParquetWriter(path, t.schema)
            writer.write_table(t)
            labels.append(np.asarray(t.column("label")))
            oracle.append(p)
    finally:
        if writer is not None:
            writer.close()
    y, p = np.concatenate(labels), np.concatenate(oracle)
    curve = cost_quality_curve(p, y)
    with open(os.path.join(out_dir, ORACLE_FILE), "w") as f:
        json.dump(
            {
                "router": "oracle: routes by the true P(lightweight suffices | features)",
                "rows": rows,
                **curve,
            },
            f,
            indent=2,
        )
    meta = {
        "features": ROUTING_FEATURES,
        "label": "label: 1 = lightweight model suffices, 0 = powerful model needed",
        "difficulty": difficulty,
        "rule": ROUTING_RULE,
        "labels": ROUTING_LABELS[difficulty],
        "weights": ROUTING_WEIGHTS,
        "threshold": ROUTING_THRESHOLD,
        "sharpness": ROUTING_SHARPNESS if difficulty == "features" else None,
        "noise": noise if difficulty == "uniform" else None,
        "bayes_accuracy": float(np.maximum(p, 1.0 - p).mean()),
        "oracle_apgr": curve["apgr"],
        "rows": rows,
        "seed": seed,
        "label_positive_rate": float(y.mean()),
        "files": {"data": "routing.parquet", "oracle": ORACLE_FILE},
    }
    with open(os.path.join(out_dir, "routing.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


# ---- a companyfacts document ------------------------------------------------------------------
_DOC_CONCEPTS = [  # (taxonomy, concept, unit, label, instant, log-scale of values)
    ("us-gaap", "Revenues", "USD", "Revenues", False, 23.0),
    ("us-gaap", "CostOfRevenue", "USD", "Cost of Revenue", False, 22.5),
    ("us-gaap", "NetIncomeLoss", "USD", "Net Income (Loss)", False, 21.5),
    ("us-gaap", "OperatingIncomeLoss", "USD", "Operating Income (Loss)", False, 22.0),
    ("us-gaap", "ResearchAndDevelopmentExpense", "USD", "Research and Development Expense", False, 21.0),
    ("us-gaap", "Assets", "USD", "Assets", True, 24.5),
    ("us-gaap", "Liabilities", "USD", "Liabilities", True, 24.0),
    (
        "us-gaap",
        "CashAndCashEquivalentsAtCarryingValue",
        "USD",
        "Cash and Cash Equivalents, at Carrying Value",
        True,
        23.0,
    ),
    ("us-gaap", "AccountsPayableCurrent", "USD", "Accounts Payable, Current", True, 22.0),
    ("us-gaap", "StockholdersEquity", "USD", "Stockholders' Equity Attributable to Parent", True, 23.5),
    ("us-gaap", "EarningsPerShareBasic", "USD/shares", "Earnings Per Share, Basic", False, 0.5),
    ("us-gaap", "EarningsPerShareDiluted", "USD/shares", "Earnings Per Share, Diluted", False, 0.45),
    (
        "us-gaap",
        "WeightedAverageNumberOfSharesOutstandingBasic",
        "shares",
        "Weighted Average Number of Shares Outstanding, Basic",
        False,
        21.0,
    ),
    (
        "us-gaap",
        "EffectiveIncomeTaxRateContinuingOperations",
        "pure",
        "Effective Income Tax Rate",
        False,
        -1.5,
    ),
    (
        "dei",
        "EntityCommonStockSharesOutstanding",
        "shares",
        "Entity Common Stock, Shares Outstanding",
        True,
        21.0,
    ),
]


def write_companyfacts_json(
    path: str, cik: int, name: str, facts_per_concept: int = 8, seed: int = 0, concepts: int | None = None
) -> int:
    """Write a small synthetic SEC companyfacts document (gzip when `path` ends in .gz) and return
    its number of unique facts (per taxonomy/concept/unit/start/end).

    Like the real documents, a fact is reported again in the next year's filing as a comparative
    (sometimes restated) and occasionally in an amendment (10-K/A), so ingest must de-duplicate.
    """
    rng = np.random.default_rng([seed, 3, cik])
    chosen = _DOC_CONCEPTS[: concepts or len(_DOC_CONCEPTS)]
    n_filings = facts_per_concept + 4  # room for next-year comparatives
    fy_start = np.datetime64("2015-10", "M")
    filings = []
    for j in range(n_filings):
        q_end = fy_start + 3 * j + 2
        end = (q_end + 1).astype("datetime64[D]") - 1
        annual = j % 4 == 3
        filed = end + (int(rng.integers(55, 90)) if annual else int(rng.integers(25, 45)))
        filings.append(
            {
                "end": str(end),
                "annual": annual,
                "fy": 2016 + j // 4,
                "fp": _FP[j % 4],
                "form": _FORM[j % 4],
                "filed": str(filed),
                "accn": f"0001193125-{str(filed)[2:4]}-{(cik * 31 + j) % 400_000:06d}",
                "q_start": str((q_end - 2).astype("datetime64[D]")),
                "y_start": str((q_end - 11).astype("datetime64[D]")),
            }
        )
    facts: dict = {}
    unique: set = set()
    for taxonomy, concept, unit, label, instant, scale in chosen:
        rows = []
        for j in range(facts_per_concept):
            f = filings[j]
            start = None if instant else (f["y_start"] if f["annual"] else f["q_start"])
            val = _doc_value(rng, unit, scale)
            unique.add((taxonomy, concept, unit, start, f["end"]))
            # Reported originally, then as a comparative a year later (1 in 4 restated), and now and
            # then again in an amendment filed a month after the original.
            reports = [(f, val)]
            later = filings[j + 4]
            restated = _restate(rng, unit, val) if rng.random() < 0.25 else val
            reports.append((later, restated))
            if f["annual"] and rng.random() < 0.5:
                amended = dict(
                    f,
                    form="10-K/A",
                    accn=f"{f['accn'][:-6]}{int(f['accn'][-6:]) + 500_000:06d}",
                    filed=str(np.datetime64(f["filed"]) + 30),
                )
                reports.append((amended, val))
            for r, (g, v) in enumerate(reports):
                fact = {
                    "end": f["end"],
                    "val": v,
                    "accn": g["accn"],
                    "fy": g["fy"],
                    "fp": g["fp"],
                    "form": g["form"],
                    "filed": g["filed"],
                }
                if start is not None:
                    fact = {"start": start, **fact}
                if r == len(reports) - 1:  # SEC frames the latest report of a period
                    yq = np.datetime64(f["end"], "M").astype(int)
                    year, quarter = 1970 + yq // 12, (yq % 12) // 3 + 1
                    fact["frame"] = (
                        f"CY{year}Q{quarter}I"
                        if instant
                        else f"CY{year}"
                        if f["annual"]
                        else f"CY{year}Q{quarter}"
                    )
                rows.append(fact)
        body = {"label": label, "description": f"{label}, as reported (synthetic).", "units": {unit: rows}}
        facts.setdefault(taxonomy, {})[concept] = body
    doc = {"cik": int(cik), "entityName": name, "facts": facts}
    data = json.dumps(doc).encode()
    if path.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        with open(path, "wb") as fh:
            fh.write(data)
    return len(unique)


def _restate(rng: np.random.Generator, unit: str, val):
    """A restated value: a few percent off the original, at the unit's precision."""
    moved = val * (1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.01, 0.08))
    if unit == "USD/shares":
        return round(moved, 2) if round(moved, 2) != val else round(val + 0.01, 2)
    if unit == "pure":
        return round(moved, 4) if round(moved, 4) != val else round(val + 1e-4, 4)
    return int(round(moved, -3 if unit == "USD" else 0)) or val + 1000


def _doc_value(rng: np.random.Generator, unit: str, scale: float):
    if unit == "USD/shares":
        return round(float(rng.normal(math.exp(scale), 0.8)), 2)
    if unit == "pure":
        return round(float(1 / (1 + math.exp(-(scale + 0.3 * rng.standard_normal())))), 4)
    return int(round(math.exp(scale + 0.3 * rng.standard_normal()), -3 if unit == "USD" else 0))
