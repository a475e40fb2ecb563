"""Unit tests of the recommendation rules (a package, so basenames may repeat elsewhere)."""
