"""Why a checkpoint is this big: the breakdown of every byte (`breakdown`), its findings
(`findings`), folders and DCP checkpoints (`folder`, `dcp`) and identical tensors (`duplicates`).
"""
