"""Fixtures shared by the test modules."""

from tests.nodes import nodes

__all__ = ["nodes"]
