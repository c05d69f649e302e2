"""autoscope agent package."""
