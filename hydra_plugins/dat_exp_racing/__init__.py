"""The racing sweeper, a Hydra plugin shipped by dat-exp (``hydra/sweeper=racing``)."""
