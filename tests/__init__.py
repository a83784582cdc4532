"""The test suite, a package so that its helpers import as ``tests.helpers.*`` from the repository root."""
