"""hpft: finetune and evaluate hybrid video VLMs with progressive visual-token reduction inside every block."""

__version__ = "0.1.0"
