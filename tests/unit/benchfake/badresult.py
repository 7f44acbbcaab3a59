"""A benchmark that returns a dict missing the contract's keys: an error row naming them."""


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    return {"name": "badresult", "figures": [{"figure": "x", "value": "fast"}]}
