"""Results derived from a tensor's values, remembered while the tensor is alive and unchanged.

An op called on the same index tensor again (a packed batch's seg or cu_seqlens, used by every
block of a forward) need not check its values or rebuild what it derives from them each time.
`TensorMemo.get(t, key, compute)` returns compute()'s result for (t, key), computed once per
version of t: torch bumps `t._version` at every in-place write (also through a view), so a
changed tensor is computed again. Entries are held weakly by the tensor object and go with it.

Not seen as changes: writes that bypass torch's version counter (through `t.data`, a NumPy view
or a foreign kernel); inference tensors have no version counter and are never remembered.
"""
from __future__ import annotations

from torch.utils.weak import WeakIdKeyDictionary


class TensorMemo:
    """{(tensor, key): value at the tensor's version}; see the module docstring."""

    def __init__(self):
        self._entries = WeakIdKeyDictionary()

    def get(self, tensor, key, compute):
        """compute()'s value for (tensor, key): remembered from an earlier call at the same
        tensor version, else computed (and remembered unless compute raises)."""
        if tensor.is_inference():
            return compute()
        version = tensor._version
        entries = self._entries.get(tensor)
        if entries is None:
            entries = self._entries[tensor] = {}
        hit = entries.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = compute()
        entries[key] = (version, value)
        return value
