"""Test-only tooling that Ray workers must be able to import (fault-injection hooks)."""
