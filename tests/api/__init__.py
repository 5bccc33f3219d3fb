"""Tests of the REST API (jobs, executions, dead letters, nodes) through APIClient with real tokens."""
