"""The Textual browser: `screens/` (browse, compare, why, export, help) over `widgets/` (the tree,
the detail panel, the filter bar). It never opens a file itself: it calls the layers below in
workers and shows what they return.
"""
