"""Annotation: suggestion heuristics (no Qt) and the PyQt5 tools."""
