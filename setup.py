"""Packaging that pyproject.toml cannot say: the Hydra configs live at the top level in conf/ (conf/sweep links to
sweeps/) and ship inside the wheel as package data `bench/conf/`, so a non-editable install finds them."""
from setuptools import find_packages, setup

setup(
    # hydra_plugins/bench_sweeper: the sweeper conf/bench.yaml selects (Hydra loads plugins from that package only)
    packages=find_packages(include=["bench", "bench.*"]) + ["bench.conf", "hydra_plugins.bench_sweeper"],
    package_dir={"bench.conf": "conf"},
    package_data={"bench.conf": ["*.yaml", "**/*.yaml"],
                  "bench.evaluators": ["shipped/*/*"]},  # frozen evaluators + reference statistics
)
