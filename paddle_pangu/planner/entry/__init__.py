"""Scripts handed to `paddle.distributed.launch` by path (a launched script's folder becomes `sys.path[0]`,
so they live apart from the library modules)."""
