"""autoscope drivers package."""
