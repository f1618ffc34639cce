"""Model families (registry), loading and prompt rendering, and tiny random checkpoints for tests."""

from iadr1.models.registry import FAMILIES, Family, family_of, get_family

__all__ = ["FAMILIES", "Family", "family_of", "get_family"]
