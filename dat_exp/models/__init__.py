"""Model surgery: placements, the YAML builder, pretrained transfer."""
