"""The browser's widgets: the checkpoint tree, the detail panel, the diff rows and tree, the
filter bar.
"""
