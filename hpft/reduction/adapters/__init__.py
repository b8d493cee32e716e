"""Adapters: how the reduction engine runs and scores each hybrid decoder family."""
