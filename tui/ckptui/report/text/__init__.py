"""rich renderings for the terminal: `inspect`'s tree and findings, the training cards."""
