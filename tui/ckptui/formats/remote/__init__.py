"""Checkpoints at a URL, read by range requests: the remote `Source` (`reader`), its block
cache (`buffer`), zip directories over ranges (`zip_index`), folders (`folder`) and the only
module that imports fsspec (`fs`).
"""
