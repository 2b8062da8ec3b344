"""Decoding stage-2 descriptors: two engines, one record type, one schema.

* :func:`decode` -- one descriptor through the Construct schemas, a typed :class:`Descriptor`;
* :func:`decode_array` -- many descriptors with numpy, a DataFrame (``descriptors`` schema);
* :func:`decode_ownership` -- the fast subset a page-table walk needs.
"""

from s2trace.decode.construct_engine import decode
from s2trace.decode.numpy_engine import OwnershipCodes, decode_array, decode_ownership
from s2trace.decode.record import Descriptor

__all__ = ["Descriptor", "OwnershipCodes", "decode", "decode_array", "decode_ownership"]
