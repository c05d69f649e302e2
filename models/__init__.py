"""autoscope models package."""
