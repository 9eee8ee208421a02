"""The browser's screens: browse, compare, why, export, help."""
