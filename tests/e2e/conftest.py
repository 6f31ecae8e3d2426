"""The Ganeti cluster fixtures of tests/ganeti.py, for the end-to-end tests."""

from tests.ganeti import debian_image, ganeti_cluster, snf_deployment, snf_helper

__all__ = ["debian_image", "ganeti_cluster", "snf_deployment", "snf_helper"]
