"""What a checkpoint means, from its tree alone: bytes below a node and search (`index`), what
each part is for (`roles`, `frameworks`), state-dict naming (`state_dict`), parameter counts and
the module view; `sizes/` (why the file is this big), `diff/` (what differs), `training/`
(optimizer mapping, resume card, weights_only verdict). No I/O beyond `formats` and `tensors`.
"""
