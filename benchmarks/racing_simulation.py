"""The README's racing table: jobs against the full grid and wrong decisions by target_delta/σ,
from 500 simulated sweeps (fixed RNG). Usage: .venv/bin/python benchmarks/racing_simulation.py"""

from dat_exp.analysis.racing import savings_table

if __name__ == "__main__":
    print("\n".join(savings_table()))
