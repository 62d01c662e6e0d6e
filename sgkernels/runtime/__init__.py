"""Runtime helpers under every other layer of sgkernels (they import nothing from it):

    files.py    atomic file writes (temporary file, fsync, os.replace, fsync of the folder)
    device.py   --device resolution and the torchrun process group
    images.py   model-space images in [-1, 1] -> uint8, and PNG grids of them
    memo.py     results derived from a tensor's values, kept while it is unchanged
    memory.py   glibc malloc set to reuse freed memory (large CPU activations without page faults)
"""
