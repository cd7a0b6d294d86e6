"""Per cell: find the cells of an image (segment), read and check masks (masks), label each cell (predict) and
score it (metrics)."""
