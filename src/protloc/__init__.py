"""protloc: protein subcellular localisation from fluorescence microscope images."""
__version__ = "0.1.0"
from protloc.api import load  # noqa: E402,F401  (light: imports torch only when called)
