"""Weight-file I/O shared by training, conversion and inference (see `weights.py`)."""
