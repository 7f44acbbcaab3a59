"""A benchmark whose run raises: the runner must report it as an error row and go on."""


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    raise RuntimeError("the measured service did not start")
