"""Thin torch trainer on the shards (THA1 networks). The only subpackage that imports torch."""
