"""snf-image: a Ganeti OS definition that deploys images and customizes them in a helper VM."""

__version__ = "0.25.0"
