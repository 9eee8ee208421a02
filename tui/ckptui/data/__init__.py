"""Tables made by tools and read by `unpickler`: `reach` (what each stdlib/torch/numpy callable
can reach, made by tests/tools/make_reach.py), torch's weights_only allow-list, and the demo
checkpoint `ckptui --demo` opens. No code imports from above.
"""
