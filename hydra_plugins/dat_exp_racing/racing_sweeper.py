"""``hydra/sweeper=racing``: seeds added round by round only where the answer is still open.

Hydra imports every plugin at every start, so this module imports nothing heavy: the rounds
run in :mod:`dat_exp.racing`, imported when a racing sweep starts.
"""

# No ``from __future__ import annotations``: Hydra loads plugins outside ``sys.modules``, where
# a dataclass cannot resolve string annotations.
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class RacingSweeperConf:
    """The sweeper's parameters: the one home of their defaults (see README, Racing)."""

    _target_: str = "hydra_plugins.dat_exp_racing.racing_sweeper.RacingSweeper"
    seeds_min: int = 3  # seeds of every variant and its baseline after round 1
    seeds_max: int = 8  # seeds at most, at the last round
    seeds_step: int = 1  # seeds added per round
    alpha: float = 0.05  # family-wise error over the whole race (the report's ALPHA)
    # required: the smallest difference of the metric worth knowing (0.005 = 0.5 mAP points)
    target_delta: float | None = None
    # null: test/mAP50-95 where the data has a labelled, disjoint test split, else mAP50-95
    metric: str | None = None
    params: dict[str, str] | None = None  # the grid in the basic sweeper's syntax


ConfigStore.instance().store(
    group="hydra/sweeper", name="racing", node=RacingSweeperConf, provider="dat_exp"
)


class RacingSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = settings  # read from the composed config (hydra.sweeper) when racing
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from dat_exp.racing import run_race

        return run_race(self, arguments)
