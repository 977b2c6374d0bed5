"""Scripts handed to `paddle.distributed.launch` by path (a folder of their own, as training/entry/:
a launched script's folder becomes `sys.path[0]`)."""
