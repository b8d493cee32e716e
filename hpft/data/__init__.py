"""Data: video reading (decord), the synthetic needle generator, prompts, collation and the DataModule."""
