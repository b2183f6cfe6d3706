"""nbval settings for the notebooks: compare stdout of checked cells, never stderr (tqdm bars)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
