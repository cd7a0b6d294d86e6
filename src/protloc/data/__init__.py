"""From files to tables and tensors: readers (layouts), images (decoding), stains, intensity, the dataset."""

# The intensity scales images may have (--bit-depth, a run's bit_depth): a pixel's full scale is 2**bit_depth - 1.
# Cameras write 10, 12, 14 or 16 bits into 16-bit files. Here, in a module without imports, so that the command
# line and the run config can name them without loading numpy or PIL.
BIT_DEPTHS = (8, 10, 12, 14, 16)
BIT_DEPTHS_TEXT = f"{', '.join(map(str, BIT_DEPTHS[:-1]))} or {BIT_DEPTHS[-1]}"  # for help and messages

# Dataset layouts (--format, a table's and a run's layout), named once: the Kaggle Zero-to-GANs and HPA 2018
# competition folders, a generic CSV of paths and labels, a folder of images, and image files given one by one.
Z2G, HPA2018, GENERIC, FOLDER, IMAGES = "z2g", "hpa2018", "generic", "folder", "images"
LAYOUTS = (Z2G, HPA2018, GENERIC, FOLDER, IMAGES)

# `protloc demo-data` writes this file into the dataset it generates; its presence makes a dataset "demo" (the
# kind a run records, training_data.py).
DEMO_MARKER = "demo-data.json"
