"""protloc: protein subcellular localisation from fluorescence microscope images."""
__version__ = "0.1.0"
