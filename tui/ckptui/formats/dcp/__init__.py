"""torch.distributed.checkpoint folders: the `.metadata` pickle read by a confined C
unpickler (`fast_unpickler`, `metadata`, `interpretation`), the `.distcp` items (`items`),
findings, and the reader that joins them (`reader`).
"""
