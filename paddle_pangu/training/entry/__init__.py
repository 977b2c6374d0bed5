"""Scripts handed to `paddle.distributed.launch` by path.

They live in a folder of their own because a launched script's folder becomes
`sys.path[0]`, where any module named like a standard-library one would shadow it; this folder
holds only the scripts.
"""
