"""Headless rendering of posed MMD models (ModernGL over EGL). Filled in by the renderer issue."""
