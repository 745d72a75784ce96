"""dat-exp: an ablation harness for deformable attention in YOLO detectors.

Importing the package keeps Ultralytics offline and quiet and registers the project's layers
with its YAML parser, so that ``YOLO("model.yaml")`` and ``YOLO("best.pt")`` work in any process.
"""

from dat_exp.env import configure_offline, quiet_ultralytics

configure_offline()
quiet_ultralytics()

from dat_exp.models.registry import register_layers  # noqa: E402  (after the environment)

register_layers()
