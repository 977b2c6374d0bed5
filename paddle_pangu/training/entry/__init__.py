"""Scripts handed to `paddle.distributed.launch` by path.

They live in a folder of their own because a launched script's folder becomes
`sys.path[0]`: next to `training/logging.py` it would shadow the standard
library's `logging`.
"""
