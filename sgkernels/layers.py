"""Import layers of sgkernels and its benchmarks, lowest first: the one place the order is written.

A module may import from its own layer and from the layers below it, never from a layer above,
at module level or inside a function (an import on use hides a cycle, it does not remove one).
tests/test_layers.py reads LAYERS and checks every import under sgkernels/ and benchmarks/.

A module belongs to the layer of the longest entry that is its name or the name of a package
above it (sgkernels.model.dit -> "sgkernels.model"). The entry "sgkernels" is the root package
only (the lazy user-API facade: its __getattr__ imports any submodule on attribute access, so
importing the bare package reaches the top); every other module must match a longer entry.
"""

LAYERS = (
    # runtime helpers: atomic file writes, device and process group, uint8 images and grids
    ("sgkernels.runtime",),
    # the backends (torch, Triton, the CUDA extension built from csrc/ and its wrapper); this file
    ("sgkernels._C", "sgkernels.kernels", "sgkernels.layers"),
    # public ops: custom_op registration, dispatch over the backends
    ("sgkernels.ops",),
    # the routed DiT, its text refiner (model.text) and the preset registry
    ("sgkernels.model", "sgkernels.presets"),
    # built on the model: FLOP counter, flow-matching path, guidance rules, text encoder and
    # feature cache, dataset readers
    ("sgkernels.flops", "sgkernels.flow", "sgkernels.guidance", "sgkernels.text",
     "sgkernels.data"),
    # trainer, sampler, metrics (train's sample grids call the sampler: same layer)
    ("sgkernels.train", "sgkernels.sampling", "sgkernels.eval"),
    # command line and the root facade
    ("sgkernels", "sgkernels.cli", "sgkernels.__main__"),
    ("benchmarks",),
)
