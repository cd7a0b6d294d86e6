"""From files to tables and tensors: readers (layouts), images (decoding), stains, intensity, the dataset."""

# The intensity scales images may have (--bit-depth, a run's bit_depth): a pixel's full scale is 2**bit_depth - 1.
# Cameras write 10, 12, 14 or 16 bits into 16-bit files. Here, in a module without imports, so that the command
# line and the run config can name them without loading numpy or PIL.
BIT_DEPTHS = (8, 10, 12, 14, 16)
# The dataset layouts readers.py reads (--format), named here for the same reason.
LAYOUTS = ("z2g", "hpa2018", "generic", "folder", "images")
