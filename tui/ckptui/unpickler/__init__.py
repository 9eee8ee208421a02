"""Reading a pickle without running it: the inert opcode loop (`inert`), what a named global
can reach (`safety`), the stand-ins recorded for allowed data constructors (`recorded`,
`recorders/`), the tree builder, and the replay of torch's weights_only unpickler. Imports only
`core` and `data`; never opens a file.
"""
