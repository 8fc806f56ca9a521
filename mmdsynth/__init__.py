"""mmdsynth: MMD models in, Talking Head Anime training data out."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("mmdsynth")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"
