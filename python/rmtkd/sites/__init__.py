"""Compression sites: one class per kind behind one protocol (``rmtkd.sites.base.Site``), and their registry.

Built-in kinds, in registration order: ``tied_embedding`` (a token embedding and the LM head tied to it),
``embedding``, ``linear`` (Linears sharing one input), ``linear_output`` (a narrowing Linear's output side),
``conv2d`` (Conv2ds sharing one input). A new kind is one module defining a Site subclass, decorated with
:func:`register_site_kind`.
"""
# Registration order is discovery's tie-break order, hence the import order.
from rmtkd.sites.base import Call, Include, Site, Trace, find_sites, register_site_kind, site_kind, site_kinds, trace
from rmtkd.sites import tied_embedding, embedding, linear, linear_output, conv2d  # noqa: E402, F401, I001
from rmtkd.sites.conv2d import SharedInputConv2d
from rmtkd.sites.embedding import EmbeddingTable
from rmtkd.sites.linear import SharedInputLinear
from rmtkd.sites.linear_output import LinearOutput
from rmtkd.sites.tied_embedding import TiedEmbedding

__all__ = ["Call", "EmbeddingTable", "Include", "LinearOutput", "SharedInputConv2d", "SharedInputLinear", "Site",
           "TiedEmbedding", "Trace", "find_sites", "register_site_kind", "site_kind", "site_kinds", "trace"]
