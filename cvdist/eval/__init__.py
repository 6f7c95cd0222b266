"""Evaluation: metrics over rank-sharded evaluation data."""
