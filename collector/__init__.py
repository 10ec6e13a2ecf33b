"""accessproof: scheduled collection of SOC 2 CC6.2 evidence and verifiable evidence packs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("accessproof")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
