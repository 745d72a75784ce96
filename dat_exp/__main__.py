"""``python -m dat_exp [-m] key=value ...``: one job per composed config (Hydra)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import dat_exp  # noqa: F401  (offline environment, layer registration)
from dat_exp.config import register_configs, resolve
from dat_exp.sweep import STATE, execute

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    execute(resolve(cfg))


if __name__ == "__main__":
    main()
    sys.exit(1 if STATE.failed else 0)
