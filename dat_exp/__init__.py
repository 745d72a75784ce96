"""dat-exp: an ablation harness for deformable attention in YOLO detectors."""
