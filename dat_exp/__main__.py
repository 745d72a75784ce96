"""``python -m dat_exp [-m] key=value ...``: one job per composed config (Hydra).

Exit status: 0 when every job finished (or was skipped as done), 1 when a job failed,
2 for invalid input (nothing started), 130 when interrupted.
"""

from __future__ import annotations

import os
import signal
import sys

import hydra
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig

import dat_exp  # noqa: F401  (offline environment, layer registration)
from dat_exp.config import register_configs, resolve
from dat_exp.search import objective_value
from dat_exp.sweep import STATE, composition_error, execute, interrupted
from dat_exp.validate import InvalidJob, check_plugins, check_runs_dir

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """One job; its return value is what a search sweeper (hparams_search) optimises."""
    job = resolve(cfg)
    return objective_value(job, execute(job))


FULL_ERROR = "HYDRA_FULL_ERROR"
# What Hydra raises for a bad override, a missing option or a value the schema refuses
COMPOSITION_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def entry() -> int:
    # SIGTERM (a scheduler's stop, a preemption) ends jobs as Ctrl-C does: their runs KILLED.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        check_runs_dir()  # before Hydra creates its folders in there
        check_plugins(sys.argv[1:])
    except InvalidJob as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Hydra would print a composition error over several lines and exit 1: let it raise here
    # instead, so that bad input gets one line and exit 2 like every other check. Only
    # composition errors are bad input; anything else keeps its traceback.
    full_error = os.environ.get(FULL_ERROR)
    os.environ[FULL_ERROR] = "1"
    try:
        main()
    except KeyboardInterrupt:
        interrupted()
        return 130
    except COMPOSITION_ERRORS as err:
        print(f"error: {composition_error(err)}", file=sys.stderr)
        return 2
    finally:
        if full_error is None:
            os.environ.pop(FULL_ERROR, None)
    if any(r.status == "INVALID" for r in STATE.results):
        return 2
    return 1 if STATE.failed else 0


if __name__ == "__main__":
    sys.exit(entry())
