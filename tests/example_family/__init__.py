"""A minimal model family, declared in the tests: what adding a family takes (see docs/families.md)."""
